package admin

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/url"

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

// tagsRequest replaces every tag of a device; an empty map removes them all.
type tagsRequest struct {
	Tags map[string]string `json:"tags"`
}

func (h *handler) setTags(w http.ResponseWriter, r *http.Request) {
	var req tagsRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, err)
		return
	}
	d, err := h.svc.SetTags(r.Context(), r.PathValue("id"), req.Tags)
	h.reply(w, d, err)
}

// SetTags implements Service.
func (c *Client) SetTags(ctx context.Context, id string, tags map[string]string) (store.Device, error) {
	req := tagsRequest{Tags: maps.Clone(tags)}
	if req.Tags == nil {
		req.Tags = map[string]string{}
	}
	var out store.Device
	err := c.do(ctx, http.MethodPut, "/v1/devices/"+url.PathEscape(id)+"/tags", req, &out)
	return out, err
}
