"""What well-known technologies are, for artifacts that only name one.

A third of a real knowledge base are thin technology detectors: a name ("Falco"), a category
and code signatures, no description. People ask for what a technology does ("runtime
security monitoring of containers"), and a 384-dimension sentence model does not know what
"Falco" is (cosine 0.05 to that query; "Falco runtime security" 0.44). So when an artifact has
no description of its own, embed.embedding_text() adds the one line this glossary has for the
technology its id or name names. A curator's description always wins; `validate --quality`
still lists the artifact, because the glossary knows only famous names.

Each line: names (the first is the canonical one; the others are aliases, matched after
lower-casing and dropping everything but letters and digits) | what it is.
Changing this table changes what is embedded: tests/test_embed.py holds its digest and fails
until embed.TEXT_VERSION is bumped with it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from typing import Any

_TABLE = """
opentelemetry, otel | vendor-neutral observability framework: instrumentation APIs and SDKs that emit distributed traces, metrics and logs to any backend
jaeger | distributed tracing system that follows a request across microservices and visualises its spans and latency
zipkin | distributed tracing system that collects timing data of requests across services
tempo, grafana tempo | distributed tracing backend that stores traces cheaply in object storage
prometheus | monitoring system and time series database that scrapes metrics from services and evaluates alerting rules
alertmanager | routes, groups and silences alerts from Prometheus to email, chat and paging
grafana | dashboards and visualisation for metrics, logs and traces from many data sources
sentry | error tracking and crash reporting: captures exceptions and stack traces from production applications
bugsnag | error monitoring and crash reporting for web and mobile applications
rollbar | real-time error tracking and exception reporting for applications
loki, grafana loki | log aggregation system that indexes logs by labels and queries them with LogQL
elk, elastic stack | Elasticsearch, Logstash and Kibana: log collection, search and dashboards
logstash | pipeline that ingests, transforms and ships logs and events
kibana | web interface to search and visualise data stored in Elasticsearch
fluentd | log collector that unifies logging from many sources and forwards it
fluent bit, fluentbit | lightweight log and metrics processor and forwarder
vector, vector dev | observability data pipeline that collects, transforms and routes logs and metrics
datadog | hosted monitoring and analytics for infrastructure, applications, logs and traces
new relic, newrelic | hosted application performance monitoring and observability
honeycomb | observability service for querying high-cardinality events and traces
statsd | daemon and protocol for sending counters, timers and gauges as metrics
victoriametrics | fast time series database and long-term storage for Prometheus metrics
thanos | highly available Prometheus with long-term storage in object storage
pagerduty | incident response and on-call paging that alerts engineers when systems fail
opsgenie | on-call scheduling and alert management
pyroscope | continuous profiling of CPU and memory in production
langfuse | tracing, evaluation and monitoring of LLM applications
falco | runtime security monitoring for containers and Kubernetes that detects suspicious system calls and behaviour
trivy | vulnerability scanner for container images, file systems, dependencies and infrastructure as code
grype | vulnerability scanner for container images and file systems
snyk | scans dependencies, code and containers for known security vulnerabilities
semgrep | static analysis that finds bugs and security issues with code patterns
bandit | static security analysis for Python code
sonarqube, sonar | static code quality and security analysis platform
gitleaks | detects hard-coded secrets, passwords and API keys in git repositories
trufflehog | finds leaked credentials and secrets in code and history
vault, hashicorp vault | secrets management: stores and issues secrets, credentials, dynamic database passwords and encryption keys centrally
sops | encrypts secrets inside configuration files with KMS or age keys
opa, open policy agent | general-purpose policy engine: writes authorization and admission rules as code in Rego
kyverno | Kubernetes policy engine that validates and mutates resources
keycloak | identity and access management: single sign-on, OAuth2 and OpenID Connect login, user federation
auth0 | hosted authentication and authorization service for login and single sign-on
okta | identity provider for single sign-on and user management
clerk | hosted user authentication and session management for web apps
cert manager, certmanager | issues and renews TLS certificates in Kubernetes
lets encrypt, letsencrypt, certbot | free automated TLS certificates
cosign, sigstore | signs and verifies container images and software artifacts
oauth2 proxy | reverse proxy that adds OAuth2 login in front of applications
redis | in-memory key-value data store used as cache, message broker with publish/subscribe, session store and queue, with key expiry
valkey | in-memory key-value store, an open source fork of Redis
dragonfly, dragonflydb | in-memory data store compatible with Redis and Memcached
memcached | distributed in-memory cache for key-value objects that speeds up web applications
postgresql, postgres | relational SQL database with transactions, indexes and extensions
mysql | relational SQL database server
mariadb | relational SQL database, a fork of MySQL
sqlite | embedded relational SQL database in a single file
mongodb, mongo | document database storing JSON-like documents with flexible schemas
cassandra, apache cassandra | distributed wide-column database for high write throughput without a single point of failure
scylladb, scylla | high-performance wide-column database compatible with Cassandra
dynamodb | managed key-value and document database on AWS
couchdb | document database with HTTP API and multi-master replication
cockroachdb | distributed SQL database that survives node failures
yugabytedb | distributed SQL database compatible with PostgreSQL
elasticsearch | distributed full-text search and analytics engine built on inverted indexes
opensearch | open source search and analytics engine, a fork of Elasticsearch
solr, apache solr | full-text search server built on Lucene
meilisearch | fast typo-tolerant full-text search engine for apps
typesense | typo-tolerant full-text search engine
algolia | hosted search as a service with instant results
clickhouse | column-oriented database for real-time analytical queries over large data
duckdb | in-process analytical SQL database for columnar data
snowflake | cloud data warehouse
bigquery | serverless cloud data warehouse on Google Cloud
neo4j | graph database storing nodes and relationships, queried with Cypher
arangodb | multi-model database for graphs, documents and key-value
qdrant | vector database and similarity search engine for embeddings
weaviate | vector database with semantic and hybrid search
pinecone | managed vector database for similarity search over embeddings
milvus | open source vector database for embedding similarity search at scale
chroma, chromadb | embedding database for AI applications and retrieval
faiss | library for efficient similarity search and clustering of dense vectors
pgvector | vector similarity search inside PostgreSQL: stores embeddings and finds nearest neighbours
timescaledb | time series database built on PostgreSQL with hypertables, compression and continuous aggregates
influxdb | time series database for metrics and events
questdb | fast time series SQL database
postgis | geospatial extension for PostgreSQL: geometry types, spatial indexes and queries
supabase | hosted PostgreSQL backend with auth, storage and realtime APIs
firebase | Google's app backend: realtime database, authentication and hosting
etcd | distributed reliable key-value store for configuration and coordination
consul | service discovery, health checking and key-value configuration for distributed services
zookeeper, apache zookeeper | coordination service for configuration, naming and leader election
minio | S3-compatible object storage server for files and blobs
s3, amazon s3 | object storage for files and blobs in the cloud
ceph | distributed storage for objects, blocks and files
pgbouncer | lightweight connection pooler for PostgreSQL
prisma | type-safe ORM and database toolkit for Node.js and TypeScript
sqlalchemy | SQL toolkit and ORM for Python
ecto | database wrapper and query language for Elixir
flyway | database schema migrations with versioned SQL scripts
liquibase | database schema change management
alembic | database migrations for SQLAlchemy
dbt | transforms data in the warehouse with SQL models, tests and lineage
kafka, apache kafka | distributed event streaming platform: a durable, partitioned, replicated commit log for high-throughput messages
redpanda | Kafka-compatible streaming data platform
pulsar, apache pulsar | distributed messaging and streaming with multi-tenancy and geo-replication
rabbitmq | message broker with queues, exchanges and routing over AMQP
nats | lightweight high-performance messaging system for publish/subscribe, request/reply and streaming
sqs, amazon sqs | managed message queues on AWS
sns, amazon sns | managed publish/subscribe notifications on AWS
kinesis | real-time data streaming on AWS
zeromq, zmq | asynchronous messaging library for sockets and patterns
mosquitto, mqtt | lightweight publish/subscribe messaging for IoT devices
celery | distributed task queue that runs background jobs in worker processes
sidekiq | background job processing for Ruby
oban | background job processing for Elixir backed by PostgreSQL
bullmq, bull | Redis-backed job and message queue for Node.js
rq, python rq | simple Redis-backed job queue for Python
temporal | durable workflow execution: long-running, fault-tolerant workflows with retries that survive crashes
cadence | fault-oblivious stateful workflow orchestration
airflow, apache airflow | schedules and monitors data pipelines as DAGs of tasks
prefect | workflow orchestration for data pipelines in Python
dagster | data orchestrator for pipelines and assets
luigi | builds pipelines of batch jobs with dependencies
step functions | serverless workflow orchestration on AWS
debezium | change data capture: streams database row changes into Kafka
spark, apache spark | distributed engine for large-scale data processing and analytics
flink, apache flink | stateful stream processing of unbounded data
beam, apache beam | unified model for batch and streaming data pipelines
kubernetes, k8s | container orchestration: schedules, scales and heals containers across a cluster of nodes
helm | package manager for Kubernetes: charts of templated manifests with values
kustomize | customises Kubernetes manifests with overlays
k3s | lightweight Kubernetes distribution
kind, minikube | runs a local Kubernetes cluster for development
terraform | infrastructure as code: declares cloud resources in HCL and applies plans
opentofu | open source infrastructure as code, a fork of Terraform
pulumi | infrastructure as code written in general-purpose programming languages
ansible | agentless configuration management and automation over SSH
chef | configuration management with recipes
puppet | configuration management that enforces declared system state
crossplane | manages cloud infrastructure through Kubernetes APIs
packer | builds machine images from templates
vagrant | reproducible virtual machine development environments
docker | builds and runs applications in containers from images
docker compose, docker_compose | defines and runs multi-container applications with a YAML file
podman | daemonless container engine compatible with Docker
istio | service mesh: sidecar proxies that add traffic splitting, mutual TLS, retries and telemetry between services
linkerd | lightweight service mesh for Kubernetes with mutual TLS and metrics
envoy | high-performance edge and service proxy
nginx | web server, reverse proxy and load balancer
traefik | cloud-native reverse proxy and load balancer with automatic configuration
haproxy | high-performance TCP and HTTP load balancer
caddy | web server with automatic HTTPS
kong | API gateway for routing, authentication and rate limiting
cilium | eBPF-based networking, security and observability for Kubernetes
nomad | schedules and orchestrates containers and applications
keda | event-driven autoscaling for Kubernetes workloads
knative | serverless workloads on Kubernetes
aws lambda, lambda | serverless functions run on demand on AWS
cloudflare workers | serverless functions at the edge
argocd, argo cd | GitOps continuous delivery: syncs Kubernetes clusters with manifests in git
flux, fluxcd | GitOps toolkit that keeps Kubernetes in sync with git
argo workflows | container-native workflow engine for Kubernetes
github actions, github_actions | CI/CD workflows that build, test and deploy on GitHub events
gitlab ci | CI/CD pipelines defined in .gitlab-ci.yml
jenkins | automation server for continuous integration and delivery pipelines
circleci | hosted continuous integration and delivery
buildkite | CI/CD with self-hosted agents
tekton | Kubernetes-native CI/CD pipelines
dependabot | automated dependency update pull requests
renovate | automated dependency updates
nix | reproducible package manager and builds
bazel | fast reproducible build and test system for large monorepos
langchain | framework for LLM applications that composes prompts, models, retrievers and tools into chains and agents
langgraph | builds stateful multi-actor LLM agents as graphs
llamaindex, llama index | data framework for LLM applications: indexing documents and retrieval-augmented generation
crewai | multi-agent framework: orchestrates role-playing LLM agents with goals that collaborate on tasks
autogen | multi-agent conversation framework where LLM agents talk to each other to solve tasks
semantic kernel | SDK for integrating LLMs, plugins and planners into applications
haystack | framework for search, question answering and RAG pipelines with LLMs
dspy | programs and optimises LLM prompts and pipelines
openai | API for GPT language models, embeddings and assistants
anthropic | API for Claude language models
ollama | runs large language models locally on your own machine
vllm | high-throughput LLM inference and serving engine with paged attention
llama cpp, llamacpp | LLM inference in C/C++ on CPUs and GPUs
text generation inference, tgi | serves large language models over HTTP
litellm | one API to call many LLM providers
instructor | structured outputs from LLMs with validation
transformers, huggingface | pretrained transformer models for text, vision and audio
sentence transformers | sentence and text embeddings
mlflow | machine learning lifecycle: experiment tracking, model registry and deployment
weights and biases, wandb | experiment tracking and visualisation for machine learning
pytorch, torch | deep learning framework with tensors, autograd and GPU training of neural networks
tensorflow | machine learning framework for training and serving neural networks
jax | numerical computing with automatic differentiation and accelerators
keras | high-level API for building neural networks
scikit learn, sklearn | classical machine learning: classification, regression, clustering
xgboost | gradient boosted decision trees
onnx runtime, onnxruntime | cross-platform inference engine for ONNX models
ray | distributed computing for Python and machine learning workloads
kubeflow | machine learning pipelines on Kubernetes
bentoml | packages and serves machine learning models as APIs
triton inference server | serves models from many frameworks on GPUs
spacy | industrial natural language processing
gradio | web UIs for machine learning demos
streamlit | turns Python scripts into data web apps
dvc | data and model version control
feast | feature store for machine learning
mcp, model context protocol | protocol that connects AI assistants to tools and data sources
playwright | end-to-end browser testing and automation across Chromium, Firefox and WebKit
cypress | end-to-end testing of web applications in the browser
selenium | browser automation for testing web applications
puppeteer | headless Chrome automation from Node.js
k6 | load testing: scripts virtual users to measure performance under traffic
locust | load testing with user behaviour written in Python
jmeter | load and performance testing
gatling | load testing as code
hypothesis | property-based testing: generates many inputs to find edge cases that break code
quickcheck | property-based testing with random generated inputs
pytest | Python testing framework with fixtures
jest | JavaScript testing framework
vitest | fast unit test framework for Vite projects
junit | unit testing for Java
rspec | behaviour-driven testing for Ruby
exunit | unit testing for Elixir
testcontainers | throwaway real databases and services in containers for integration tests
wiremock | mocks HTTP APIs for tests
pact | consumer-driven contract testing between services
storybook | develops and tests UI components in isolation
stripe | online payments: charges, subscriptions, invoices and checkout
paypal | online payments and checkout
braintree | payment processing
twilio | communications API for SMS, voice calls and messaging
sendgrid | transactional and marketing email delivery API
mailgun | email sending API
postmark | transactional email delivery
slack | team chat; API and bots for messages and notifications
discord | chat platform with bots and webhooks
segment | customer data platform that collects analytics events
mixpanel | product analytics of user events
launchdarkly | feature flag management and gradual rollouts
unleash | open source feature toggles
plaid | connects apps to bank accounts
shopify | e-commerce platform and API
graphql | query language for APIs where clients ask for exactly the fields they need from one schema
apollo | GraphQL client and server tooling
grpc | high-performance RPC framework over HTTP/2 with Protocol Buffers and streaming
protobuf, protocol buffers | language-neutral schema and binary serialisation for structured data
openapi, swagger | describes REST APIs in a machine-readable spec
trpc | end-to-end type-safe APIs for TypeScript
websocket, websockets | full-duplex real-time connection between browser and server
socket io | real-time bidirectional event communication
avro, apache avro | data serialisation with schemas
json schema | describes and validates the structure of JSON documents
fastapi | Python web framework for APIs with type hints and automatic OpenAPI docs
flask | lightweight Python web framework
django | batteries-included Python web framework with ORM and admin
express, expressjs | minimal web framework for Node.js
nestjs | structured server-side framework for Node.js in TypeScript
fastify | fast web framework for Node.js
koa | small web framework for Node.js
hono | small web framework for edge runtimes
nextjs, next | React framework with server rendering and routing
nuxt | Vue framework with server rendering
remix | full-stack React web framework
astro | content-focused web framework
react | JavaScript library for building user interfaces from components
vue, vuejs | progressive JavaScript framework for user interfaces
angular | TypeScript web application framework
svelte, sveltekit | compiler-based UI framework
htmx | HTML attributes for AJAX and dynamic pages without JavaScript frameworks
tailwind, tailwindcss | utility-first CSS framework
rails, ruby on rails | full-stack Ruby web framework
sinatra | small Ruby web framework
laravel | PHP web framework
symfony | PHP web framework and components
spring, spring boot | Java framework for web applications and microservices
quarkus | Kubernetes-native Java framework
aspnet core, asp net core | web framework for .NET
gin | HTTP web framework for Go
echo | web framework for Go
fiber | Express-inspired web framework for Go
actix, actix web | web framework for Rust
axum | web framework for Rust built on tokio
rocket | web framework for Rust
tokio | asynchronous runtime for Rust
phoenix | Elixir web framework with channels and LiveView for real-time apps
phoenix liveview, liveview | server-rendered real-time interactive UIs in Elixir
absinthe | GraphQL toolkit for Elixir
nodejs, node | JavaScript runtime for servers
deno | secure JavaScript and TypeScript runtime
bun | fast JavaScript runtime, bundler and package manager
vite | frontend build tool and dev server
webpack | JavaScript module bundler
esbuild | fast JavaScript bundler
"""


def normalise(name: str) -> str:
    """The form names are matched in: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]+", "", name.lower())


@functools.cache
def _entries() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in _TABLE.strip().splitlines():
        names, about = line.split(" | ", 1)
        for name in names.split(","):
            entries.setdefault(normalise(name), about.strip())
    return entries


# Words that say what kind of artifact this is, not which technology: "redis_detector" and
# "Phoenix framework" name Redis and Phoenix.
_GENERIC = re.compile(
    r"(?i)(?:^|[\s_\-.])(?:detector|detection|technology|tech|framework|library|lib|sdk)(?=$|[\s_\-.])"
)


def describe(*names: str) -> str | None:
    """The glossary's line for the first of `names` it knows (as written, then without words
    such as "detector" or "framework"), or None."""
    entries = _entries()
    for name in names:
        for form in (name, _GENERIC.sub(" ", name or "")):
            about = entries.get(normalise(form)) if form and normalise(form) else None
            if about:
                return about
    return None


def digest() -> str:
    """A short hash of the table: what embed.TEXT_VERSION must follow."""
    return hashlib.sha256(_TABLE.encode()).hexdigest()[:12]


def _field(content: Mapping[str, Any], key: str) -> Any:
    """A top-level field, else the same field under "metadata" ("" counts as absent)."""
    if content.get(key) not in (None, ""):
        return content.get(key)
    metadata = content.get("metadata")
    return metadata.get(key) if isinstance(metadata, Mapping) else None


def note_for(artifact_id: str, content: Mapping[str, Any]) -> str | None:
    """The glossary's line for an artifact with no description or summary of its own (what
    embed.embedding_text() embeds for it, and what import writes to `glossary_note` for text
    search), or None. A curator's description always wins."""
    if _field(content, "description") or _field(content, "summary"):
        return None
    name = _field(content, "name") or _field(content, "title") or artifact_id.replace("_", " ")
    return describe(artifact_id, str(name))


# The rule of note_for(); bump it when the rule changes (the table has its own digest).
_NOTE_RULE = "n1"


def note_digest() -> str:
    """What import stores beside each row's note: a row whose digest differs is written again."""
    return f"{_NOTE_RULE}-{digest()}"
