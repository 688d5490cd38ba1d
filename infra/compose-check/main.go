// compose-check loads a Compose file the way `docker compose config` does (schema,
// variable interpolation, references between services) and prints the resolved
// project as JSON, so the file can be checked on machines without Docker.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check FILE")
		os.Exit(2)
	}
	if err := check(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "compose-check:", err)
		os.Exit(1)
	}
}

func check(path string) error {
	file, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	opts, err := cli.NewProjectOptions([]string{file}, cli.WithOsEnv, cli.WithName("tierflow"))
	if err != nil {
		return err
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		return err
	}
	out, err := project.MarshalJSON()
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}
