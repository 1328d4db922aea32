from w2v2ser._cli import main

raise SystemExit(main())
