"""The ``bmtrain`` trainer backend (BMTrain ZeRO-3, the seed's engine): its plugin (:mod:`.plugin`),
its part of the run sequence (:mod:`.training`), BMTrain's start-up, collectives and optimizer step
(:mod:`.runtime`), its partitioned checkpoints (:mod:`.checkpoint`) and the BMTrain build (:mod:`.install`)."""
