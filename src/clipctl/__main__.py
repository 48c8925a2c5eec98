from clipctl.cli import main

main()
