"""The ACTS protocol report of ``certify.py`` (ACTS Section 4, with CLEVER): options, running, summary, rendering."""
