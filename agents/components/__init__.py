"""Components every agent runs and the ones roles are made of. Importing this package
imports none of them: an agent loads what its role lists (a buyer never loads the
bank's books). ``bank`` is the public face of the bank's, for instruments' bank halves."""
