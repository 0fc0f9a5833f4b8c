// Command cell is Cell's host binary: the CLI (run, image, doctor, bench) and, later, the API
// server.
package main

import (
	"io"

	"context"
	"os"

	"github.com/sirupsen/logrus"

	"github.com/cellhq/cell/internal/cli"
)

func main() {
	// gvisor-tap-vsock's switch logs every closed VM link through logrus at error level; Cell
	// reports network events itself (internal/netstack) with log/slog.
	logrus.SetOutput(io.Discard)
	os.Exit(cli.Main(context.Background(), os.Args[1:]))
}
