package admin

import (
	"context"
	"fmt"

	"github.com/warden-iot/warden/internal/store"
)

// SetTags implements Service. The device is read again after the change
// so the caller sees the tags as stored.
func (l Local) SetTags(ctx context.Context, id string, tags map[string]string) (store.Device, error) {
	if err := l.Registry.SetTags(ctx, id, tags); err != nil {
		return store.Device{}, err // the registry names the device
	}
	info, err := l.Registry.Device(ctx, id)
	if err != nil {
		return store.Device{}, fmt.Errorf("set tags of device %q: read it back: %w", id, err)
	}
	return info.Device, nil
}
