# linkmanager: build, test, install.
#
#   make                 build bin/linkmanager (static, CGO_ENABLED=0)
#   make test            every test, as CI runs them (the lab needs root)
#   make install         binary, example config (if absent), systemd unit
#   make demo            the NAT lab demo (root)
#   make image           container image with $(CONTAINER) (docker, podman)
#
# install honours DESTDIR (staged installs, packaging) and PREFIX (binary
# location; the installed unit's ExecStart follows it). The config and the
# unit go to /etc whatever PREFIX is: systemd and the unit look there.

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
PREFIX    ?= /usr/local
BINDIR    ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR   ?= $(SYSCONFDIR)/systemd/system
DESTDIR   ?=
BUILD_DIR ?= bin
CONTAINER ?= docker
IMAGE     ?= linkmanager:$(VERSION)

LDFLAGS := -s -w -X github.com/linkmanager/linkmanager/linkmanager.Version=$(VERSION)
CONFIG  := $(DESTDIR)$(SYSCONFDIR)/linkmanager/linkmanager.yaml
ENVFILE := $(DESTDIR)$(SYSCONFDIR)/linkmanager/env

.PHONY: all build test install uninstall demo image clean

all: build

# Static, like the container image: no libc dependency, the pure-Go DNS
# resolver everywhere.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BUILD_DIR)/linkmanager ./cmd/linkmanager

# Keep identical to README.md and .ci/run.
test:
	$(GO) test -race -count=1 -parallel 8 -timeout 20m ./...

install: build
	install -D -m 0755 $(BUILD_DIR)/linkmanager $(DESTDIR)$(BINDIR)/linkmanager
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/bin/linkmanager|$(BINDIR)/linkmanager|g' deploy/systemd/linkmanager.service \
		> $(DESTDIR)$(UNITDIR)/linkmanager.service.tmp
	chmod 0644 $(DESTDIR)$(UNITDIR)/linkmanager.service.tmp
	mv -f $(DESTDIR)$(UNITDIR)/linkmanager.service.tmp $(DESTDIR)$(UNITDIR)/linkmanager.service
	@# Never overwrite an admin's config or secrets.
	@if [ -e $(CONFIG) ]; then \
		echo "kept existing $(CONFIG)"; \
	else \
		install -D -m 0644 configs/linkmanager.yaml $(CONFIG) && echo "installed example config $(CONFIG): edit it"; \
	fi
	@if [ ! -e $(ENVFILE) ]; then \
		install -d -m 0755 $(dir $(ENVFILE)) && \
		( umask 077 && printf '%s\n' \
			'# Secrets for linkmanager, read by systemd (EnvironmentFile=) as root; keep mode 0600.' \
			'# Referenced from linkmanager.yaml as "$${LINKMANAGER_TRUNK_PASSWORD}".' \
			'# Changing this file needs a restart: a reload keeps the environment.' \
			'#LINKMANAGER_TRUNK_PASSWORD=' > $(ENVFILE) ) && chmod 0600 $(ENVFILE); \
	fi
	@echo "next: linkmanager check-config --config $(SYSCONFDIR)/linkmanager/linkmanager.yaml"
	@echo "      systemctl daemon-reload && systemctl enable --now linkmanager"

# The config directory stays: it holds the admin's config and secrets.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/linkmanager $(DESTDIR)$(UNITDIR)/linkmanager.service

demo:
	e2e/lab/demo.sh

image:
	$(CONTAINER) build -f deploy/docker/Dockerfile --build-arg VERSION=$(VERSION) -t $(IMAGE) .

clean:
	rm -rf $(BUILD_DIR)
