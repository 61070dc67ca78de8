// Command vectorgen writes the envelope test vectors (docs/envelope.md, "Test
// vectors"):
//
//	go run ./envelope/internal/vectorgen -out testdata/envelope
//
// It refuses to write anything unless envelope.Seal agrees byte for byte with
// the generator's own implementation of the spec and envelope.Open refuses
// every invalid case with the reason the case declares.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/warden-iot/warden/envelope/internal/vectors"
	"github.com/warden-iot/warden/internal/fileutil"
)

func main() {
	out := flag.String("out", "testdata/envelope", "directory to write the vector files into")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "vectorgen:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	files, err := vectors.Generate()
	if err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		path := filepath.Join(dir, name)
		if err := fileutil.WriteFileAtomic(path, files[name], 0o644); err != nil {
			return err
		}
		fmt.Printf("wrote %s (%d bytes)\n", path, len(files[name]))
	}
	return nil
}
