from event_router.cli import main

raise SystemExit(main())
