package app

import (
	_ "embed"
	"net/http"
)

//go:embed web/index.html
var indexHTML []byte

// indexHandler serves the live demo page: one self-contained file, no CDN,
// no build step.
func indexHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
		w.Write(indexHTML)
	})
}
