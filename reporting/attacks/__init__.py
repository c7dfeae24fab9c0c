"""The attacks report of ``certify.py`` (Amoeba Table 4): its options, its running and its rendering."""
