//go:build !unix

package audit

import (
	"os"
	"time"
)

// lockFile is a no-op where flock does not exist: there, only one process
// may write the log (docs/audit.md, "Limits").
func lockFile(*os.File, time.Duration) error { return nil }

func unlockFile(*os.File) error { return nil }
