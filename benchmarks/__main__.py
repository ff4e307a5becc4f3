"""python -m benchmarks run [--quick] [--only micro,cycle,...] [--out DIR] [--report FILE]"""

import json
import sys

if len(sys.argv) >= 3 and sys.argv[1] == "child":
    # Inside a fresh interpreter: one measurement, one JSON line on stdout.
    from importlib import import_module

    spec = json.loads(sys.argv[2])
    module, _, name = spec["fn"].rpartition(":")
    result = getattr(import_module(module), name)(**spec.get("kwargs", {}))
    print(json.dumps(result))
else:
    from .run import main

    main()
