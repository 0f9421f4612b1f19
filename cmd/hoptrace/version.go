package main

import (
	"fmt"
	"runtime/debug"
)

// Set at build time by the Makefile:
// -ldflags "-X main.buildVersion=... -X main.buildCommit=...".
// Without them, the module version and VCS revision Go recorded are used.
var (
	buildVersion string
	buildCommit  string
)

// version is "VERSION (commit COMMIT[, modified], GOVERSION)".
func version() string {
	bi, _ := debug.ReadBuildInfo()
	return versionOf(buildVersion, buildCommit, bi)
}

// versionOf prefers the values set with -ldflags, then those of bi (nil
// when the binary carries no build information).
func versionOf(buildVersion, buildCommit string, bi *debug.BuildInfo) string {
	v, commit, modified, gover := buildVersion, buildCommit, false, ""
	if bi != nil {
		gover = bi.GoVersion
		if v == "" && bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if commit == "" {
					commit = s.Value
				}
			case "vcs.modified":
				modified = buildCommit == "" && s.Value == "true"
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	if commit == "" {
		commit = "unknown"
	}
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if modified {
		commit += ", modified"
	}
	if gover != "" {
		return fmt.Sprintf("%s (commit %s, %s)", v, commit, gover)
	}
	return fmt.Sprintf("%s (commit %s)", v, commit)
}
