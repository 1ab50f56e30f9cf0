from bgpd.cli.main import main

main()
