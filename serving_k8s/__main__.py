import sys

from serving_k8s.render import main

sys.exit(main())
