import sys

from boltzformer.cli.commands import main

sys.exit(main())
