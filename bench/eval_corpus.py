"""The evaluation corpus for search relevance: 150+ artifacts shaped like a real knowledge base.

About a third are thin technology detectors as the original system keeps them (name,
category, detector_signatures with code patterns, dependencies and file patterns,
parent_pattern, and no description); the rest are patterns, code templates (the same template
in several languages: near-duplicates), prompts, workflows and quality checklists with
descriptions. `write(root)` lays them out as a templates_data/ tree (folder = type).

The queries are in bench/relevance_eval.json, split into a tuning half and a test half.
"""

from __future__ import annotations

import json
from pathlib import Path

# id, name, category, parent_pattern, code patterns, dependencies, file patterns
DETECTORS = [
    (
        "opentelemetry",
        "OpenTelemetry",
        "observability",
        "telemetry",
        ["trace.get_tracer(", "tracer.start_as_current_span(", "TracerProvider", "SpanExporter"],
        ["opentelemetry-api", "opentelemetry-sdk", "opentelemetry-exporter-otlp"],
        ["otel-collector*.yaml"],
    ),
    (
        "jaeger",
        "Jaeger",
        "observability",
        "telemetry",
        ["jaeger_client.Config(", "JAEGER_AGENT_HOST", "opentracing.tracer"],
        ["jaeger-client", "opentracing"],
        ["jaeger*.yaml"],
    ),
    (
        "prometheus",
        "Prometheus",
        "observability",
        "metrics",
        ["Counter(", "Histogram(", "start_http_server(", "prometheus.MustRegister("],
        ["prometheus-client", "github.com/prometheus/client_golang"],
        ["prometheus.yml", "*.rules.yml"],
    ),
    (
        "grafana",
        "Grafana",
        "observability",
        "metrics",
        ['"dashboard":', '"panels":', "datasources:"],
        [],
        ["grafana/dashboards/*.json", "provisioning/datasources/*.yaml"],
    ),
    (
        "sentry",
        "Sentry",
        "observability",
        "error_tracking",
        ["sentry_sdk.init(", "Sentry.init(", "capture_exception("],
        ["sentry-sdk", "@sentry/node"],
        [".sentryclirc"],
    ),
    (
        "loki",
        "Grafana Loki",
        "observability",
        "logging",
        ["loki.source", "logcli query", '{job="'],
        ["promtail"],
        ["loki-config.yaml", "promtail*.yaml"],
    ),
    (
        "falco",
        "Falco",
        "security",
        "runtime_security",
        ["- rule:", "condition: spawned_process and container", "output:"],
        ["falcosidekick"],
        ["falco_rules*.yaml", "falco.yaml"],
    ),
    (
        "trivy",
        "Trivy",
        "security",
        "vulnerability_scanning",
        ["trivy image", "trivy fs --severity", "aquasecurity/trivy-action"],
        [],
        [".trivyignore", "trivy.yaml"],
    ),
    (
        "vault",
        "HashiCorp Vault",
        "security",
        "secrets",
        ["hvac.Client(", "vault kv get", "VAULT_ADDR", "vault.NewClient("],
        ["hvac", "github.com/hashicorp/vault/api"],
        ["vault*.hcl"],
    ),
    (
        "opa",
        "Open Policy Agent",
        "security",
        "policy",
        ["package authz", "default allow = false", "input.user", "opa eval"],
        ["github.com/open-policy-agent/opa"],
        ["*.rego"],
    ),
    (
        "keycloak",
        "Keycloak",
        "security",
        "identity",
        ["KeycloakOpenID(", "realm_name=", "/realms/", "keycloak-js"],
        ["python-keycloak", "keycloak-js"],
        ["realm-export.json"],
    ),
    (
        "redis",
        "Redis",
        "database",
        "key_value_store",
        ["redis.Redis(", "r.publish(", "pubsub.subscribe(", "SETEX", "redis.NewClient("],
        ["redis", "ioredis", "github.com/redis/go-redis"],
        ["redis.conf"],
    ),
    (
        "memcached",
        "Memcached",
        "database",
        "cache",
        ["pymemcache.client", "mc.set(", "memcache.New("],
        ["pymemcache", "github.com/bradfitz/gomemcache"],
        [],
    ),
    (
        "postgresql",
        "PostgreSQL",
        "database",
        "relational_database",
        ["psycopg.connect(", "CREATE TABLE", "pg_stat_activity", "pgx.Connect("],
        ["psycopg", "pg", "github.com/jackc/pgx"],
        ["postgresql.conf", "pg_hba.conf", "*.sql"],
    ),
    (
        "mongodb",
        "MongoDB",
        "database",
        "document_store",
        ["MongoClient(", "db.collection.find(", "insert_one(", "aggregate(["],
        ["pymongo", "mongoose"],
        ["mongod.conf"],
    ),
    (
        "elasticsearch",
        "Elasticsearch",
        "database",
        "search_engine",
        ["Elasticsearch(", '"query": {"match"', "es.index(", "_search"],
        ["elasticsearch", "@elastic/elasticsearch"],
        ["elasticsearch.yml"],
    ),
    (
        "clickhouse",
        "ClickHouse",
        "database",
        "analytics_database",
        ["clickhouse_connect.get_client(", "ENGINE = MergeTree", "ORDER BY (timestamp"],
        ["clickhouse-connect", "clickhouse-driver"],
        ["clickhouse-server/config.xml"],
    ),
    (
        "neo4j",
        "Neo4j",
        "database",
        "graph_database",
        ["GraphDatabase.driver(", "MATCH (n)-[r]->(m)", "CREATE (a:Person"],
        ["neo4j"],
        ["*.cypher"],
    ),
    (
        "qdrant",
        "Qdrant",
        "database",
        "vector_database",
        ["QdrantClient(", "client.search(collection_name", "PointStruct("],
        ["qdrant-client"],
        [],
    ),
    (
        "pgvector",
        "pgvector",
        "database",
        "vector_database",
        ["CREATE EXTENSION vector", "embedding vector(", "<=>", "register_vector("],
        ["pgvector"],
        [],
    ),
    (
        "timescaledb",
        "TimescaleDB",
        "database",
        "time_series",
        ["create_hypertable(", "time_bucket(", "add_retention_policy("],
        [],
        [],
    ),
    (
        "kafka",
        "Apache Kafka",
        "messaging",
        "event_streaming",
        ["KafkaProducer(", "KafkaConsumer(", "bootstrap_servers=", "kafka.NewReader("],
        ["kafka-python", "confluent-kafka", "kafkajs"],
        ["server.properties"],
    ),
    (
        "rabbitmq",
        "RabbitMQ",
        "messaging",
        "message_broker",
        ["pika.BlockingConnection(", "channel.basic_publish(", "exchange_declare(", "amqp.Dial("],
        ["pika", "amqplib", "github.com/rabbitmq/amqp091-go"],
        ["rabbitmq.conf", "definitions.json"],
    ),
    (
        "nats",
        "NATS",
        "messaging",
        "message_broker",
        ["nats.connect(", "js.publish(", "jetstream.New(", "nc.Subscribe("],
        ["nats-py", "github.com/nats-io/nats.go", "gnat"],
        ["nats-server.conf"],
    ),
    (
        "celery",
        "Celery",
        "messaging",
        "task_queue",
        ["@app.task", "Celery(", "apply_async(", "celery -A"],
        ["celery"],
        ["celeryconfig.py"],
    ),
    (
        "temporal",
        "Temporal",
        "orchestration",
        "workflow_engine",
        ["@workflow.defn", "@activity.defn", "workflow.ExecuteActivity(", "client.start_workflow("],
        ["temporalio", "go.temporal.io/sdk"],
        [],
    ),
    (
        "airflow",
        "Apache Airflow",
        "orchestration",
        "data_pipeline",
        ["from airflow import DAG", "PythonOperator(", "schedule_interval=", "@task"],
        ["apache-airflow"],
        ["dags/*.py"],
    ),
    (
        "kubernetes",
        "Kubernetes",
        "infrastructure",
        "container_orchestration",
        ["apiVersion: apps/v1", "kind: Deployment", "kubectl apply", "replicas:"],
        ["kubernetes"],
        ["k8s/*.yaml", "*.deployment.yaml"],
    ),
    (
        "helm",
        "Helm",
        "infrastructure",
        "container_orchestration",
        ["{{ .Values.", "helm install", "apiVersion: v2"],
        [],
        ["Chart.yaml", "values.yaml", "templates/*.tpl"],
    ),
    (
        "terraform",
        "Terraform",
        "infrastructure",
        "infrastructure_as_code",
        ['resource "aws_', 'provider "', "terraform {", 'module "'],
        [],
        ["*.tf", "*.tfvars", ".terraform.lock.hcl"],
    ),
    (
        "pulumi",
        "Pulumi",
        "infrastructure",
        "infrastructure_as_code",
        ["import pulumi", "pulumi.export(", "new aws.s3.Bucket("],
        ["pulumi", "@pulumi/aws"],
        ["Pulumi.yaml"],
    ),
    (
        "docker",
        "Docker",
        "infrastructure",
        "containers",
        ["FROM ", "COPY --from=", "ENTRYPOINT [", "docker build"],
        [],
        ["Dockerfile", ".dockerignore"],
    ),
    (
        "docker_compose",
        "Docker Compose",
        "infrastructure",
        "containers",
        ["services:", "depends_on:", "docker compose up"],
        [],
        ["docker-compose.yml", "compose.yaml"],
    ),
    (
        "istio",
        "Istio",
        "infrastructure",
        "service_mesh",
        ["kind: VirtualService", "kind: DestinationRule", "istio-injection: enabled"],
        [],
        ["istio/*.yaml"],
    ),
    (
        "argocd",
        "Argo CD",
        "ci_cd",
        "gitops",
        ["kind: Application", "argocd app sync", "syncPolicy:"],
        [],
        ["argocd/*.yaml"],
    ),
    (
        "github_actions",
        "GitHub Actions",
        "ci_cd",
        "continuous_integration",
        ["runs-on: ubuntu-latest", "uses: actions/checkout@", "on: [push, pull_request]"],
        [],
        [".github/workflows/*.yml"],
    ),
    (
        "langchain",
        "LangChain",
        "ai",
        "llm_framework",
        [
            "from langchain",
            "ChatPromptTemplate.from_messages(",
            "RunnableSequence",
            "create_retrieval_chain(",
        ],
        ["langchain", "langchain-core", "langchain-openai"],
        [],
    ),
    (
        "crewai",
        "CrewAI",
        "ai",
        "agent_framework",
        ["Agent(role=", "Task(description=", "Crew(agents=", "Process.sequential"],
        ["crewai", "crewai-tools"],
        ["agents.yaml", "tasks.yaml"],
    ),
    (
        "autogen",
        "AutoGen",
        "ai",
        "agent_framework",
        ["AssistantAgent(", "UserProxyAgent(", "GroupChat(", "initiate_chat("],
        ["pyautogen", "autogen-agentchat"],
        ["OAI_CONFIG_LIST"],
    ),
    (
        "llamaindex",
        "LlamaIndex",
        "ai",
        "llm_framework",
        ["VectorStoreIndex.from_documents(", "SimpleDirectoryReader(", "as_query_engine("],
        ["llama-index"],
        [],
    ),
    (
        "ollama",
        "Ollama",
        "ai",
        "model_serving",
        ["ollama.chat(", "ollama run", "OLLAMA_HOST", "/api/generate"],
        ["ollama"],
        ["Modelfile"],
    ),
    (
        "vllm",
        "vLLM",
        "ai",
        "model_serving",
        ["from vllm import LLM", "SamplingParams(", "vllm serve", "--tensor-parallel-size"],
        ["vllm"],
        [],
    ),
    (
        "mlflow",
        "MLflow",
        "ai",
        "ml_ops",
        ["mlflow.start_run(", "mlflow.log_metric(", "mlflow.register_model("],
        ["mlflow"],
        ["MLproject"],
    ),
    (
        "pytorch",
        "PyTorch",
        "ai",
        "deep_learning",
        ["import torch", "nn.Module", "loss.backward()", "optimizer.step()"],
        ["torch", "torchvision"],
        [],
    ),
    (
        "playwright",
        "Playwright",
        "testing",
        "browser_testing",
        ["page.goto(", "expect(page).to_have_title(", "await page.click("],
        ["playwright", "@playwright/test"],
        ["playwright.config.ts"],
    ),
    (
        "k6",
        "k6",
        "testing",
        "load_testing",
        ["import http from 'k6/http'", "export const options = { vus:", "check(res,"],
        [],
        ["*.k6.js"],
    ),
    (
        "hypothesis",
        "Hypothesis",
        "testing",
        "property_testing",
        ["@given(", "st.integers(", "from hypothesis import"],
        ["hypothesis"],
        [],
    ),
    (
        "stripe",
        "Stripe",
        "integrations",
        "payments",
        ["stripe.PaymentIntent.create(", "stripe.Webhook.construct_event(", "STRIPE_SECRET_KEY"],
        ["stripe"],
        [],
    ),
    (
        "twilio",
        "Twilio",
        "integrations",
        "messaging_api",
        ["Client(account_sid", "messages.create(to=", "TwilioRestClient"],
        ["twilio"],
        [],
    ),
    (
        "graphql",
        "GraphQL",
        "api",
        "api_style",
        ["type Query {", "@strawberry.type", "gql`", "ApolloServer("],
        ["strawberry-graphql", "@apollo/server", "graphql"],
        ["*.graphql", "schema.gql"],
    ),
    (
        "grpc",
        "gRPC",
        "api",
        "api_style",
        ["service Greeter {", "grpc.server(", "rpc SayHello", "protoc --go_out"],
        ["grpcio", "google.golang.org/grpc"],
        ["*.proto"],
    ),
    (
        "minio",
        "MinIO",
        "storage",
        "object_storage",
        ["Minio(", "put_object(", "presigned_get_object(", "mc alias set"],
        ["minio"],
        [],
    ),
]

# Architecture and operations patterns: id, name, description, tags
PATTERNS = [
    (
        "circuit_breaker",
        "Circuit breaker",
        "Stop calling a failing dependency for a while after repeated errors, then probe it with a trial request before resuming traffic.",
        ["resilience"],
    ),
    (
        "bulkhead",
        "Bulkhead isolation",
        "Give each downstream dependency its own bounded pool of workers or connections so one slow dependency cannot exhaust the resources of the others.",
        ["resilience"],
    ),
    (
        "retry_backoff_jitter",
        "Retry with exponential backoff and jitter",
        "Retry transient failures with growing, randomised delays and a cap on attempts so clients do not retry in lockstep.",
        ["resilience"],
    ),
    (
        "rate_limiter_token_bucket",
        "Token bucket rate limiter",
        "Allow bursts up to a bucket size and refill tokens at a fixed rate; reject or delay requests when the bucket is empty.",
        ["throttling"],
    ),
    (
        "idempotency_keys",
        "Idempotency keys",
        "Clients send a unique key with each mutating request; the server stores the first result and returns it for repeats, so retries never apply a charge twice.",
        ["api", "reliability"],
    ),
    (
        "transactional_outbox",
        "Transactional outbox",
        "Write domain events into an outbox table in the same transaction as the state change; a relay publishes them to the broker afterwards.",
        ["messaging", "consistency"],
    ),
    (
        "saga_orchestration",
        "Saga (orchestration)",
        "A coordinator runs the steps of a long business transaction across services and runs compensating actions in reverse when a step fails.",
        ["distributed-transactions"],
    ),
    (
        "cqrs",
        "CQRS",
        "Separate the write model that validates commands from read models shaped for queries, updated asynchronously.",
        ["architecture"],
    ),
    (
        "event_sourcing",
        "Event sourcing",
        "Persist every state change as an immutable event and rebuild current state by replaying the event stream.",
        ["architecture"],
    ),
    (
        "strangler_fig",
        "Strangler fig migration",
        "Route traffic for one capability at a time from a legacy system to its replacement until the old system can be switched off.",
        ["migration", "legacy"],
    ),
    (
        "feature_flags",
        "Feature flags",
        "Ship code dark and turn behaviour on per user, percentage or environment at run time without a deploy.",
        ["release"],
    ),
    (
        "blue_green_deployment",
        "Blue-green deployment",
        "Run two identical production environments and switch the router from the old one to the new one at once, keeping the old for instant rollback.",
        ["release", "deployment"],
    ),
    (
        "canary_release",
        "Canary release",
        "Send a small share of real traffic to the new version, compare error rates and latency with the baseline, and widen or roll back automatically.",
        ["release", "deployment"],
    ),
    (
        "leader_election",
        "Leader election",
        "Let one instance of a replicated service act as the coordinator using a lease in a consensus store, and hand over when its lease expires.",
        ["distributed-systems"],
    ),
    (
        "distributed_lock",
        "Distributed lock with fencing tokens",
        "Serialise work across machines with a lock that carries a monotonically increasing token, so a paused holder's late writes are rejected.",
        ["distributed-systems", "concurrency"],
    ),
    (
        "cache_aside",
        "Cache-aside",
        "Read from the cache first, load from the database on a miss and populate the cache; invalidate the entry when the record changes.",
        ["caching"],
    ),
    (
        "write_through_cache",
        "Write-through cache",
        "Update the cache and the backing store together on every write so reads never see stale data.",
        ["caching"],
    ),
    (
        "dead_letter_queue",
        "Dead letter queue",
        "Move messages that keep failing after a maximum number of deliveries to a separate queue for inspection instead of blocking the consumer.",
        ["messaging"],
    ),
    (
        "backpressure",
        "Backpressure",
        "Bound queues between producers and consumers and slow the producer down when the consumer cannot keep up, instead of buffering without limit.",
        ["streaming", "flow-control"],
    ),
    (
        "database_sharding",
        "Database sharding",
        "Split rows across several database servers by a shard key so each holds a part of the data and load.",
        ["database", "scaling"],
    ),
    (
        "read_replicas",
        "Read replicas",
        "Send read-only queries to asynchronous replicas and writes to the primary, accounting for replication lag.",
        ["database", "scaling"],
    ),
    (
        "connection_pooling",
        "Connection pooling",
        "Reuse a bounded set of open database connections across requests instead of connecting for each one.",
        ["database", "performance"],
    ),
    (
        "health_checks",
        "Liveness and readiness probes",
        "Expose separate endpoints that say whether the process is alive and whether it is ready to receive traffic, so the orchestrator restarts or drains it correctly.",
        ["operations"],
    ),
    (
        "graceful_shutdown",
        "Graceful shutdown",
        "On SIGTERM stop accepting new work, finish in-flight requests within a deadline, close connections, then exit.",
        ["operations"],
    ),
    (
        "structured_logging",
        "Structured logging",
        "Emit log lines as JSON objects with stable field names so they can be filtered and aggregated instead of grepped.",
        ["observability", "logging"],
    ),
    (
        "correlation_ids",
        "Correlation IDs",
        "Attach a request identifier at the edge and pass it through every service call and log line so one request can be followed end to end.",
        ["observability"],
    ),
    (
        "api_gateway",
        "API gateway",
        "One entry point in front of many services that handles routing, authentication, rate limits and request aggregation.",
        ["api", "architecture"],
    ),
    (
        "backend_for_frontend",
        "Backend for frontend",
        "A separate thin backend per client type (web, mobile) that shapes and aggregates data for exactly that client.",
        ["api", "architecture"],
    ),
    (
        "sidecar",
        "Sidecar",
        "Run cross-cutting concerns like proxies, TLS and telemetry in a helper container deployed next to each service instance.",
        ["architecture", "containers"],
    ),
    (
        "hexagonal_architecture",
        "Hexagonal architecture (ports and adapters)",
        "Keep domain logic independent of frameworks and databases behind ports, with adapters for each technology at the edges.",
        ["architecture"],
    ),
    (
        "repository_pattern",
        "Repository pattern",
        "Hide persistence behind a collection-like interface so domain code does not know about SQL or ORMs.",
        ["architecture", "persistence"],
    ),
    (
        "optimistic_locking",
        "Optimistic locking",
        "Detect concurrent updates with a version column checked in the UPDATE's WHERE clause, and retry or report a conflict instead of holding locks.",
        ["database", "concurrency"],
    ),
    (
        "cursor_pagination",
        "Cursor pagination",
        "Page through large result sets with an opaque cursor on an indexed sort key instead of OFFSET, so pages stay fast and stable while rows change.",
        ["api", "database"],
    ),
    (
        "soft_delete",
        "Soft delete",
        "Mark rows as deleted with a timestamp instead of removing them, and filter them out of normal queries.",
        ["database"],
    ),
    (
        "row_level_security_tenancy",
        "Multi-tenancy with row-level security",
        "Keep every tenant's rows in shared tables and let PostgreSQL row-level security policies restrict each session to its tenant.",
        ["database", "security", "saas"],
    ),
    (
        "expand_contract_migration",
        "Expand and contract schema change",
        "Change a schema without downtime: add the new structure, write to both, backfill, switch reads, then drop the old.",
        ["database", "migration"],
    ),
    (
        "presigned_upload",
        "Direct upload with presigned URLs",
        "Let clients upload large files straight to object storage with a short-lived signed URL, so the application server never proxies the bytes.",
        ["storage", "api"],
    ),
    (
        "webhook_signature",
        "Webhook signature verification",
        "Verify an HMAC of the raw request body with a shared secret and a timestamp window before trusting an incoming webhook.",
        ["security", "integrations"],
    ),
    (
        "jwt_validation",
        "JWT validation",
        "Check a bearer token's signature against the issuer's keys, its expiry, audience and issuer before using its claims.",
        ["security", "auth"],
    ),
    (
        "oauth_pkce",
        "OAuth authorization code with PKCE",
        "Let public clients such as single-page and mobile apps obtain tokens safely with a code verifier instead of a client secret.",
        ["security", "auth"],
    ),
    (
        "secret_rotation",
        "Secret rotation",
        "Rotate credentials on a schedule with two valid versions overlapping, so services pick up the new secret before the old one is revoked.",
        ["security", "operations"],
    ),
    (
        "batch_checkpointing",
        "Batch job checkpointing",
        "Record progress of a long batch job after each chunk so a crashed run resumes where it stopped instead of starting over.",
        ["batch", "reliability"],
    ),
    (
        "consistent_hashing",
        "Consistent hashing",
        "Place keys and nodes on a hash ring so adding or removing a node moves only a small share of the keys.",
        ["distributed-systems", "scaling"],
    ),
    (
        "materialized_view_refresh",
        "Materialized view with incremental refresh",
        "Precompute an expensive aggregate into a table and refresh it periodically or incrementally rather than computing it per request.",
        ["database", "performance"],
    ),
    (
        "fan_out_pubsub",
        "Publish-subscribe fan-out",
        "One published message is delivered to every subscriber, each with its own queue, so producers do not know their consumers.",
        ["messaging"],
    ),
    (
        "anti_corruption_layer",
        "Anti-corruption layer",
        "Translate between a legacy or external model and your own domain model at the boundary so their concepts do not leak in.",
        ["architecture", "legacy"],
    ),
]

# Code templates in several languages (near-duplicates): id stem, name, description, languages
TEMPLATES = [
    (
        "http_client_retry",
        "HTTP client with retries and backoff",
        "An HTTP client wrapper that retries idempotent requests on timeouts and 5xx responses with exponential backoff and a total deadline.",
        ["python", "go", "typescript", "rust"],
    ),
    (
        "nats_consumer",
        "NATS JetStream consumer with error handling",
        "A durable pull consumer with explicit acknowledgements, delayed redelivery for retryable errors and a max-deliver limit.",
        ["go", "elixir", "python"],
    ),
    (
        "rest_handler",
        "REST endpoint with validation and error mapping",
        "A JSON API handler that validates the request body, calls the service layer and maps domain errors to HTTP status codes.",
        ["python", "rust", "typescript", "elixir"],
    ),
    (
        "dockerfile_multistage",
        "Multi-stage Dockerfile",
        "Build in a full toolchain image and copy only the compiled artifact into a small non-root runtime image.",
        ["python", "go", "rust"],
    ),
    (
        "ci_pipeline",
        "CI pipeline for pull requests",
        "Lint, type-check and test on every pull request with dependency caching and a required status check.",
        ["python", "typescript"],
    ),
    (
        "unit_test_scaffold",
        "Unit test scaffold with fixtures",
        "A test module layout with setup fixtures, table-driven cases and a fake for the external dependency.",
        ["python", "typescript", "elixir", "go"],
    ),
    (
        "kafka_producer",
        "Kafka producer with delivery guarantees",
        "An idempotent producer with acks=all, retries and a delivery callback that logs failures.",
        ["python", "go"],
    ),
    (
        "graceful_shutdown_server",
        "HTTP server with graceful shutdown",
        "Start an HTTP server and on SIGTERM stop accepting connections, drain in-flight requests with a timeout and exit cleanly.",
        ["go", "rust", "python"],
    ),
    (
        "postgres_safe_index",
        "Add an index without locking writes",
        "A migration that creates an index CONCURRENTLY outside a transaction, with a lock timeout and a check for an invalid leftover index.",
        ["sql"],
    ),
    (
        "genserver_ttl_cache",
        "GenServer cache with TTL",
        "An Elixir GenServer holding an ETS-backed cache whose entries expire after a time to live, swept periodically.",
        ["elixir"],
    ),
    (
        "background_worker_pool",
        "Bounded background worker pool",
        "A fixed number of workers consuming jobs from a channel or queue with cancellation and error collection.",
        ["go", "python", "rust"],
    ),
    (
        "config_from_env",
        "Typed configuration from environment variables",
        "Load settings from the environment into a typed structure with defaults, validation and a clear error for each missing variable.",
        ["python", "go", "typescript"],
    ),
]

PROMPTS = [
    (
        "summarize_pull_request",
        "Summarize a pull request",
        "Turn a diff and its discussion into a short summary of what changed, why, and what reviewers should check.",
    ),
    (
        "explain_error",
        "Explain an error message",
        "Explain a stack trace or compiler error in plain words, name the likely cause and propose a fix.",
    ),
    (
        "write_commit_message",
        "Write a commit message",
        "Write a conventional commit message with a concise subject line and a body explaining the motivation from a staged diff.",
    ),
    (
        "generate_sql_migration",
        "Generate a SQL migration",
        "Produce a reversible schema migration from a description of the change, safe for a live database.",
    ),
    (
        "refactor_function",
        "Refactor a function",
        "Restructure a function for readability without changing behaviour, keeping its tests green.",
    ),
    (
        "code_review_checklist",
        "Review code against a checklist",
        "Review a change for correctness, security, error handling, tests and naming, and list findings by severity.",
    ),
    (
        "generate_unit_tests",
        "Generate unit tests",
        "Write unit tests for a function covering normal cases, edge cases and failure paths.",
    ),
    (
        "translate_code",
        "Translate code between languages",
        "Port a snippet from one programming language to another idiomatically, preserving behaviour and error handling.",
    ),
    (
        "write_api_docs",
        "Write API documentation",
        "Document an endpoint or function: purpose, parameters, return values, errors and an example call.",
    ),
    (
        "incident_summary",
        "Summarize an incident",
        "Turn an incident channel's timeline into a blameless summary with impact, root cause and follow-up actions.",
    ),
    (
        "classify_support_ticket",
        "Classify a support ticket",
        "Assign a category, urgency and owning team to a customer support message and extract the key details.",
    ),
    (
        "extract_structured_data",
        "Extract structured data from text",
        "Pull named fields from unstructured text into JSON matching a given schema, with null for missing values.",
    ),
    (
        "rag_answer_with_citations",
        "Answer from retrieved documents with citations",
        "Answer a question using only the provided retrieved passages and cite the passage each claim comes from; say so when the answer is not in them.",
    ),
    (
        "agent_role_prompt",
        "System prompt for a specialised agent role",
        "Define one agent's role, goal, tools and hand-off rules so it can work with other agents in a team.",
    ),
]

WORKFLOWS = [
    (
        "release_process",
        "Release process",
        "Cut a release branch, freeze, run the full test matrix, tag, publish artifacts and write release notes.",
        ["release"],
    ),
    (
        "incident_response",
        "Incident response",
        "Declare an incident, assign a commander, communicate status at fixed intervals, mitigate first, then run a postmortem.",
        ["operations", "on-call"],
    ),
    (
        "developer_onboarding",
        "Developer onboarding",
        "Set up a new engineer's access, local environment and first small change within their first week.",
        ["team"],
    ),
    (
        "dependency_upgrade",
        "Dependency upgrade",
        "Upgrade third-party libraries regularly: read changelogs, bump one at a time, run tests, watch for deprecations.",
        ["maintenance"],
    ),
    (
        "schema_change_review",
        "Schema change review",
        "Review database migrations for locking, backfill cost, rollback and compatibility with the running code before merge.",
        ["database", "review"],
    ),
    (
        "oncall_handoff",
        "On-call handoff",
        "At the end of a rotation, hand over open alerts, ongoing incidents and known risks to the next on-call engineer.",
        ["operations", "on-call"],
    ),
    (
        "security_patch_rollout",
        "Security patch rollout",
        "Triage a vulnerability advisory, find affected services, patch, redeploy in order of exposure and confirm the fix.",
        ["security", "operations"],
    ),
    (
        "data_backfill",
        "Data backfill",
        "Backfill a new column or table in small throttled batches with progress tracking, verification and a way to pause.",
        ["database", "batch"],
    ),
    (
        "postmortem",
        "Blameless postmortem",
        "Write up what happened, the timeline, contributing factors and concrete action items without assigning blame.",
        ["operations"],
    ),
    (
        "capacity_planning",
        "Capacity planning",
        "Project load growth from metrics, find the first resource to saturate and schedule scaling before it does.",
        ["operations", "scaling"],
    ),
]

QUALITY = [
    (
        "python_style",
        "Python quality standard",
        "Typed, formatted and linted Python: ruff, mypy in strict mode, pytest with coverage, no bare except.",
        "python",
    ),
    (
        "go_style",
        "Go quality standard",
        "Idiomatic Go: gofmt, go vet, staticcheck, wrapped errors with %w and context as the first parameter.",
        "go",
    ),
    (
        "rust_style",
        "Rust quality standard",
        "Rust with clippy pedantic, rustfmt, no unwrap in library code and thiserror for error types.",
        "rust",
    ),
    (
        "typescript_style",
        "TypeScript quality standard",
        "Strict TypeScript: strict compiler flags, eslint, no any, exhaustive switch over unions.",
        "typescript",
    ),
    (
        "elixir_style",
        "Elixir quality standard",
        "Elixir with credo, dialyzer, formatter, pattern matching over conditionals and tagged tuples for errors.",
        "elixir",
    ),
    (
        "sql_style",
        "SQL quality standard",
        "Readable SQL: explicit column lists, snake_case names, foreign keys indexed, no SELECT * in application code.",
        "sql",
    ),
]

_CODE = {
    "python": "def handle(request):\n    ...\n",
    "go": "func Handle(ctx context.Context) error {\n\treturn nil\n}\n",
    "typescript": "export async function handle(req: Request): Promise<Response> {}\n",
    "rust": "pub async fn handle(req: Request) -> Result<Response, Error> { todo!() }\n",
    "elixir": "def handle(conn, params) do\n  conn\nend\n",
    "sql": "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx ON t (col);\n",
}

_LANGUAGE_NAMES = {
    "python": "Python",
    "go": "Go",
    "typescript": "TypeScript",
    "rust": "Rust",
    "elixir": "Elixir",
    "sql": "SQL",
}


def artifacts() -> list[tuple[str, str, dict]]:
    """(folder, file stem, content) for every artifact of the evaluation corpus."""
    out: list[tuple[str, str, dict]] = []
    for ident, name, category, parent, patterns, deps, files in DETECTORS:
        signatures = {"patterns": patterns, "dependencies": deps, "file_patterns": files}
        out.append(
            (
                "technology_detector",
                ident,
                {
                    "id": ident,
                    "name": name,
                    "category": category,
                    "detector_signatures": signatures,
                    "parent_pattern": parent,
                },
            )
        )
    for ident, name, description, tags in PATTERNS:
        out.append(
            (
                "architecture_pattern",
                ident,
                {"id": ident, "name": name, "description": description, "tags": tags},
            )
        )
    for stem, name, description, languages in TEMPLATES:
        for language in languages:
            ident = stem if len(languages) == 1 else f"{stem}_{language}"
            label = name if len(languages) == 1 else f"{name} ({_LANGUAGE_NAMES[language]})"
            out.append(
                (
                    "code_template",
                    ident,
                    {
                        "id": ident,
                        "name": label,
                        "description": description,
                        "language": language,
                        "tags": [stem.replace("_", "-")],
                        "template": _CODE[language],
                    },
                )
            )
    for ident, name, description in PROMPTS:
        out.append(
            (
                "prompt",
                ident,
                {
                    "id": ident,
                    "name": name,
                    "description": description,
                    "template": f"{description}\n\nInput:\n{{{{input}}}}\n",
                },
            )
        )
    for ident, name, description, tags in WORKFLOWS:
        out.append(
            (
                "workflow",
                ident,
                {"id": ident, "name": name, "description": description, "tags": tags},
            )
        )
    for ident, name, description, language in QUALITY:
        out.append(
            (
                "quality_template",
                ident,
                {"id": ident, "name": name, "description": description, "language": language},
            )
        )
    return out


def write(root: Path) -> int:
    """Write the corpus as a templates_data/ tree under `root`; returns the artifact count."""
    items = artifacts()
    for folder, stem, content in items:
        path = root / folder / f"{stem}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n")
    return len(items)


if __name__ == "__main__":
    import sys

    print(write(Path(sys.argv[1])))
