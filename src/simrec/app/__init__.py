"""Streamlit demo app: fashion look-alikes and furniture "complete the look" (`simrec app`)."""
