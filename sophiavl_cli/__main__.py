from sophiavl_cli.cli.app import main

main()
