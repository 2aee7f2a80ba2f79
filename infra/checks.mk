# Static checks of the AWS product (included by the top-level Makefile).
# Uses $(BIN) (.venv), $(TOOLS) (.venv-tools: SAM CLI + cfn-lint) and their stamps.
ASL := statemachine/pipeline.asl.json
TEMPLATE := template.yaml
SAM_ENV := SAM_CLI_TELEMETRY=0

.PHONY: lint-template validate-asl sam-build

# cfn-lint (CloudFormation + SAM rules) and SAM's own validation with its linter.
lint-template: $(TOOLS_STAMP)
	$(TOOLS)/bin/cfn-lint $(TEMPLATE)
	$(SAM_ENV) $(TOOLS)/bin/sam validate --lint --template-file $(TEMPLATE) --region us-east-1

# The state machine: house rules, statelint, asl-validator (npm, pinned by
# infra/package-lock.json), moto's parser.
NODE_STAMP := infra/node_modules/.installed
$(NODE_STAMP): infra/package.json infra/package-lock.json
	npm ci --prefix infra --no-audit --no-fund --loglevel=error
	touch $@

validate-asl: $(DEV_STAMP) $(NODE_STAMP)
	$(BIN)/python -m infra.asl_check $(ASL)

# sam build without Docker into a throwaway folder; fails if a Lambda package holds torch,
# or if the layer lacks the report templates or jinja2 (write_report/record_failure need them).
LAYER := SaeflowCoreLayer/python
sam-build: $(TOOLS_STAMP)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(SAM_ENV) $(TOOLS)/bin/sam build --template-file $(TEMPLATE) \
		--build-dir "$$tmp/build" --cache-dir "$$tmp/cache" && \
	test -f "$$tmp/build/$(LAYER)/saeflow/core/report/templates/page.html.j2" && \
	test -d "$$tmp/build/$(LAYER)/jinja2" && \
	! find "$$tmp/build" -maxdepth 3 -name torch | grep -q . && \
	echo "sam build ok: layer holds saeflow, its templates and jinja2; no torch"
