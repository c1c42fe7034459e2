"""HTTP/WebSocket surface: WHIP, WHEP, admin API, pages. Never touches media."""
