package api

import (
	"net/url"

	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// RolloutList is the answer of GET /v1/rollouts.
type RolloutList struct {
	Rollouts []store.Rollout `json:"rollouts"` // newest first
}

// ImageList is the answer of GET /v1/firmware/images.
type ImageList struct {
	Images []store.FirmwareImage `json:"images"`
}

// onlyQuery refuses query parameters other than names.
func onlyQuery(q url.Values, names ...string) error {
	for k, vs := range q {
		ok := false
		for _, n := range names {
			ok = ok || k == n
		}
		if !ok {
			return invalidf("unknown query parameter %q", k)
		}
		if len(vs) > 1 {
			return invalidf("query parameter %q is given %d times; give it once", k, len(vs))
		}
	}
	return nil
}

func (a *API) listRollouts(c *call) (any, error) {
	if err := onlyQuery(c.r.URL.Query()); err != nil {
		return nil, err
	}
	rs, err := a.admin.Rollouts(c.ctx())
	if err != nil {
		return nil, err
	}
	if rs == nil {
		rs = []store.Rollout{}
	}
	return RolloutList{Rollouts: rs}, nil
}

func (a *API) rolloutStatus(c *call) (any, error) {
	if err := onlyQuery(c.r.URL.Query()); err != nil {
		return nil, err
	}
	return a.admin.RolloutStatus(c.ctx(), c.id())
}

func (a *API) pauseRollout(c *call) (any, error) {
	why, err := reason(c)
	if err != nil {
		return nil, err
	}
	r, err := a.admin.PauseRollout(c.ctx(), c.id(), why)
	return rolloutChanged(c, r, err, why)
}

func (a *API) resumeRollout(c *call) (any, error) {
	why, err := reason(c)
	if err != nil {
		return nil, err
	}
	r, err := a.admin.ResumeRollout(c.ctx(), c.id())
	return rolloutChanged(c, r, err, why)
}

func (a *API) abortRollout(c *call) (any, error) {
	why, err := reason(c)
	if err != nil {
		return nil, err
	}
	r, err := a.admin.AbortRollout(c.ctx(), c.id(), why)
	return rolloutChanged(c, r, err, why)
}

func rolloutChanged(c *call, r store.Rollout, err error, why string) (any, error) {
	c.done("rollout:"+c.id(), err, map[string]string{"reason": why})
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (a *API) listImages(c *call) (any, error) {
	q := c.r.URL.Query()
	if err := onlyQuery(q, "model"); err != nil {
		return nil, err
	}
	model := q.Get("model")
	if len(model) > registry.MaxModelLen {
		return nil, invalidf("model is %d bytes; at most %d", len(model), registry.MaxModelLen)
	}
	imgs, err := a.admin.Images(c.ctx(), model)
	if err != nil {
		return nil, err
	}
	if imgs == nil {
		imgs = []store.FirmwareImage{}
	}
	return ImageList{Images: imgs}, nil
}

func (a *API) caStatus(c *call) (any, error) {
	if err := onlyQuery(c.r.URL.Query()); err != nil {
		return nil, err
	}
	return a.admin.CAStatus(c.ctx())
}
