package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/cellhq/cell/internal/build"
)

// Packages are what a template of the base image has installed, exec-sandbox style (as
// `cell run --apt --pip --npm`): the same packages in any order are one template.
type Packages struct {
	Apt, Pip, Npm []string
}

// PackagesTemplate builds the team's template of the base image with pkgs installed, or finds
// it in the server's layer cache (a build that is all cache hits costs milliseconds), and
// returns its name for CreateOptions.Template. onLog, if set, gets the build's log.
func (c *Client) PackagesTemplate(ctx context.Context, pkgs Packages, onLog func(BuildLog)) (string, error) {
	spec, err := build.PackagesSpec(pkgs.Apt, pkgs.Pip, pkgs.Npm)
	if err != nil {
		return "", err
	}
	if len(spec.Steps) == 0 {
		return "base", nil
	}
	key, err := json.Marshal(spec.Steps)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(key)
	name := "packages-" + hex.EncodeToString(sum[:8])
	tc, err := c.CreateTemplate(ctx, name, TemplateOptions{})
	if err != nil {
		return "", fmt.Errorf("packages template: %w", err)
	}
	var steps []BuildStep
	for _, st := range spec.Steps {
		steps = append(steps, BuildStep{Type: st.Type, Args: st.Args})
	}
	if err := c.StartBuild(ctx, tc.TemplateID, tc.BuildID, BuildSpec{Steps: steps}); err != nil {
		return "", fmt.Errorf("packages template: %w", err)
	}
	if err := c.WaitBuild(ctx, tc.TemplateID, tc.BuildID, onLog); err != nil {
		return "", fmt.Errorf("packages template: %w", err)
	}
	return name, nil
}
