"""Reusable dashboard pieces (Streamlit only here and in pages/; services/ never imports streamlit)."""
