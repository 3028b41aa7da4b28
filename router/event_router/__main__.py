from event_router.ops.cli import main

raise SystemExit(main())
