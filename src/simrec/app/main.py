"""Streamlit entry point (`simrec app`, or `streamlit run src/simrec/app/main.py -- --set ...`)."""

from __future__ import annotations

import streamlit as st

from simrec.app import fashion, furniture

PAGES = {"Fashion": fashion.render, "Furniture": furniture.render}

st.set_page_config(page_title="simrec", layout="wide")
st.sidebar.title("simrec")
page = st.sidebar.radio("Page", list(PAGES), key="page")
PAGES[page]()
