// Command cell is Cell's host binary: the CLI (run, image, doctor, bench) and, later, the API
// server.
package main

import (
	"context"
	"os"

	"github.com/cellhq/cell/internal/cli"
)

func main() { os.Exit(cli.Main(context.Background(), os.Args[1:])) }
