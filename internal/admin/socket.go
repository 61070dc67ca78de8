package admin

import (
	"fmt"
	"net"
	"os"
	"time"
)

// Listen opens the admin socket at path with mode 0600; the server serves
// its API there (api.API.LocalHandler) and the CLI reaches it with
// apiclient.DialSocket. A stale socket
// left by a killed server is replaced; a live one is an error (another
// server owns this data directory).
func Listen(path string) (net.Listener, error) {
	// sun_path holds 108 bytes on Linux (104 on BSDs) including the NUL.
	if len(path) > 103 {
		return nil, fmt.Errorf("admin socket path %s is %d bytes; unix sockets allow at most 103: use a shorter --data directory", path, len(path))
	}
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("admin socket %s is in use: another warden serve runs on this data directory", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale admin socket %s: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on admin socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict admin socket %s: %w", path, err)
	}
	return l, nil
}
