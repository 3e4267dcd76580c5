from xenia.cli.main import main

main()
