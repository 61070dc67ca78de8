//go:build !unix

package broker

import "errors"

// WaitReadable is not available here: mochi's reader then waits in the
// TLS connection's Read (PATCHES.md 13).
func (c *guardedConn) WaitReadable() error { return errors.ErrUnsupported }
