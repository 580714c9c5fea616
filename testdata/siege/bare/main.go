// Command bare is the yardstick for the siege benchmark: a net/http server
// whose handler does nothing, on the same machine in the same run, so the
// producer's transaction rate can be read as a fraction of what net/http
// itself reaches here.
//
// The conditions are the producer's, so that only the handlers differ: the
// same server settings (app.NewHTTPServer: every timeout set), and a reply
// of the same shape, 202 with the headers and a JSON body as long as a
// /queue reply, because siege's own CPU time per request grows with the
// body it reads and siege shares the machine. -empty answers a bare 202
// instead.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"

	"github.com/redisbroker/broker/internal/app"
)

// reply is as long as the producer's reply to GET /queue.
var (
	reply         = []byte(`{"id":"01M8S4N3X47HS3SN95N7ARZ4F4","topic":"broker:demo:queue","mode":"queue"}` + "\n")
	headerJSON    = []string{"application/json"}
	headerNoStore = []string{"no-store"}
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bare:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	empty := flag.Bool("empty", false, "answer 202 with no headers or body")
	flag.Parse()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	fmt.Printf("bare: listening on http://%s\n", ln.Addr())
	srv := app.NewHTTPServer(*addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if *empty {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		h := w.Header()
		h["Content-Type"] = headerJSON
		h["Cache-Control"] = headerNoStore
		w.WriteHeader(http.StatusAccepted)
		w.Write(reply)
	}))
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
