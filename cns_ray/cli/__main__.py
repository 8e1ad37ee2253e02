import sys

from cns_ray.cli import main

sys.exit(main())
