from hub.server.cli import main

raise SystemExit(main())
