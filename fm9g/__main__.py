from fm9g.cli import main

raise SystemExit(main())
