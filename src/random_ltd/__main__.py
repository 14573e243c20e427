from random_ltd.cli import main
from random_ltd.integrations.distributed import exit_process

exit_process(main())  # sys.exit, except under torchrun: see exit_process
