"""``python -m toolkit.lab.avm_sim``: run the simulator until interrupted."""

from toolkit.lab.avm_sim.command import main

raise SystemExit(main())
