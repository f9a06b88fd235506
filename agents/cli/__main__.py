from semper.agents.cli import main

main()
