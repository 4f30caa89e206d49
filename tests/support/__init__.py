"""What the tests (and the benchmarks that need a throwaway service) share: tiny models and data (`factories`),
API keys and registered teachers (`service`), free ports and live servers (`servers`), a temporary PostgreSQL
database (`postgres`) and Redis clean-up (`broker`). Nothing here is imported by the service or the library."""
