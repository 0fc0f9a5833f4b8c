package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/cellhq/cell/pkg/e2bapi"
)

// BuildStep is one step of a template build (E2B's shapes; see e2bapi.BuildStep).
type BuildStep = e2bapi.BuildStep

// BuildSpec is what a template build makes: a base, its steps, the start and ready commands.
type BuildSpec = e2bapi.BuildStart

// BuildLog is one line of a build's log.
type BuildLog = e2bapi.BuildLogEntry

// TemplateOptions size a template's sandboxes (0: the server's defaults).
type TemplateOptions struct {
	Tags      []string
	CPUs      int
	MemoryMiB int
	// MinFreeDiskMiB is the free disk the template's file system gets after the steps.
	MinFreeDiskMiB int
}

// CreateTemplate starts a build of template name ([namespace/]alias[:tag]): the template's id
// and the build's, which StartBuild runs once the files of its COPY steps are uploaded.
func (c *Client) CreateTemplate(ctx context.Context, name string, o TemplateOptions) (e2bapi.TemplateCreated, error) {
	var out e2bapi.TemplateCreated
	_, err := c.do(ctx, "POST", "/v3/templates", e2bapi.TemplateCreate{Name: name, Tags: o.Tags, CPUCount: o.CPUs, MemoryMB: o.MemoryMiB, MinFreeDiskMB: o.MinFreeDiskMiB}, &out)
	return out, err
}

// UploadFiles uploads the files of a COPY step under their hash unless the server has them
// already (it says whether it had): open gives the tar (gzipped or not) and its size, and is
// called only when the files are missing.
func (c *Client) UploadFiles(ctx context.Context, templateID, hash string, open func() (io.ReadCloser, int64, error)) (present bool, err error) {
	var f e2bapi.TemplateFiles
	if _, err := c.do(ctx, "GET", "/templates/"+url.PathEscape(templateID)+"/files/"+url.PathEscape(hash), nil, &f); err != nil {
		return false, err
	}
	if f.Present || f.URL == "" {
		return true, nil
	}
	tar, size, err := open()
	if err != nil {
		return false, err
	}
	defer func() { _ = tar.Close() }()
	req, err := http.NewRequestWithContext(ctx, "PUT", f.URL, tar)
	if err != nil {
		return false, err
	}
	req.ContentLength = size // the URL is the credential: no API key goes with it
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return false, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode >= 300 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return false, &Error{Status: resp.StatusCode, Message: fmt.Sprintf("uploading files %s: %s", hash, msg)}
	}
	return false, nil
}

// StartBuild runs build buildID of template templateID with spec.
func (c *Client) StartBuild(ctx context.Context, templateID, buildID string, spec BuildSpec) error {
	if spec.Steps == nil {
		spec.Steps = []BuildStep{}
	}
	_, err := c.do(ctx, "POST", "/v2/templates/"+url.PathEscape(templateID)+"/builds/"+url.PathEscape(buildID), spec, nil)
	return err
}

// BuildStatus is a build's status and its log from offset on.
func (c *Client) BuildStatus(ctx context.Context, templateID, buildID string, offset int) (e2bapi.BuildStatus, error) {
	var st e2bapi.BuildStatus
	_, err := c.do(ctx, "GET", "/templates/"+url.PathEscape(templateID)+"/builds/"+url.PathEscape(buildID)+"/status?logsOffset="+strconv.Itoa(offset), nil, &st)
	return st, err
}

// BuildError is a failed build: the step it failed at and why.
type BuildError struct {
	Step, Message string
}

func (e *BuildError) Error() string {
	return fmt.Sprintf("the build failed at step %s: %s", e.Step, e.Message)
}

// WaitBuild follows a build to its end, giving each log line to onLog as it comes; a failed
// build is a *BuildError.
func (c *Client) WaitBuild(ctx context.Context, templateID, buildID string, onLog func(BuildLog)) error {
	return FollowBuild(ctx, func(ctx context.Context, offset int) (e2bapi.BuildStatus, error) {
		return c.BuildStatus(ctx, templateID, buildID, offset)
	}, onLog)
}

// FollowBuild polls a build's status (status returns it with the log from offset on) until the
// build ends and its whole log was given to onLog; a failed build is a *BuildError. It polls
// again at once while a full page of log lines came or the build has ended, else every 200 ms.
func FollowBuild(ctx context.Context, status func(ctx context.Context, offset int) (e2bapi.BuildStatus, error), onLog func(BuildLog)) error {
	offset := 0
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		st, err := status(ctx, offset)
		if err != nil {
			return err
		}
		offset += len(st.LogEntries)
		for _, e := range st.LogEntries {
			if onLog != nil {
				onLog(e)
			}
		}
		done := st.Status == "ready" || st.Status == "error"
		if len(st.LogEntries) > 0 && (done || len(st.LogEntries) >= e2bapi.MaxLogEntriesPerCall) {
			continue // the rest of the log first
		}
		switch st.Status {
		case "ready":
			return nil
		case "error":
			be := &BuildError{Message: "unknown error"}
			if st.Reason != nil {
				be.Step, be.Message = st.Reason.Step, st.Reason.Message
			}
			return be
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Templates lists the team's templates.
func (c *Client) Templates(ctx context.Context) ([]e2bapi.Template, error) {
	var out []e2bapi.Template
	_, err := c.do(ctx, "GET", "/templates", nil, &out)
	return out, err
}

// DeleteTemplate removes a template (by id or name).
func (c *Client) DeleteTemplate(ctx context.Context, idOrName string) error {
	_, err := c.do(ctx, "DELETE", "/templates/"+url.PathEscape(idOrName), nil, nil)
	return err
}

// TagTemplate points tags at the build target (name:tag) names.
func (c *Client) TagTemplate(ctx context.Context, target string, tags []string) error {
	_, err := c.do(ctx, "POST", "/templates/tags", e2bapi.TagsAssign{Target: target, Tags: tags}, nil)
	return err
}
