from rendezvous.cli import main

raise SystemExit(main())
