package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"gopkg.in/yaml.v3"
)

// Environment variables that override the configuration file.
const (
	envAPIURL  = "CAPSULE_API_URL"
	envAPIKey  = "CAPSULE_API_KEY"
	envProfile = "CAPSULE_PROFILE"
	envConfig  = "CAPSULE_CLI_CONFIG"
)

// defaultProfile is the profile used when none is named.
const defaultProfile = "default"

// Profile is one platform and the key to use there.
type Profile struct {
	URL    string `yaml:"url"`
	APIKey string `yaml:"api_key"`
}

// Config is the command line's configuration file.
type Config struct {
	// Current is the profile used when none is named.
	Current  string             `yaml:"current,omitempty"`
	Profiles map[string]Profile `yaml:"profiles"`
}

// configPath is where the configuration lives: CAPSULE_CLI_CONFIG, else
// $XDG_CONFIG_HOME/capsule/config.yaml (~/.config/capsule/config.yaml).
func configPath() (string, error) {
	if p := os.Getenv(envConfig); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no configuration directory (set %s): %w", envConfig, err)
	}
	return filepath.Join(dir, "capsule", "config.yaml"), nil
}

// loadConfig reads the configuration file (an empty one when absent). A
// file others can read is refused: it holds API keys.
func loadConfig(path string) (*Config, error) {
	c := &Config{Profiles: map[string]Profile{}}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %o): it holds API keys; run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	if err := yaml.NewDecoder(f).Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if c.Profiles == nil {
		c.Profiles = map[string]Profile{}
	}
	return c, nil
}

// save writes the configuration atomically, mode 0600 in a 0700 directory.
func (c *Config) save(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// names lists the profiles, sorted.
func (c *Config) names() []string {
	var n []string
	for k := range c.Profiles {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// resolve picks the profile: the flag, else CAPSULE_PROFILE, else the
// current one, else "default"; CAPSULE_API_URL and CAPSULE_API_KEY
// override its fields.
func (c *Config) resolve(flagProfile string) (name string, p Profile) {
	name = flagProfile
	if name == "" {
		name = os.Getenv(envProfile)
	}
	if name == "" {
		name = c.Current
	}
	if name == "" {
		name = defaultProfile
	}
	p = c.Profiles[name]
	if v := os.Getenv(envAPIURL); v != "" {
		p.URL = v
	}
	if v := os.Getenv(envAPIKey); v != "" {
		p.APIKey = v
	}
	return name, p
}
