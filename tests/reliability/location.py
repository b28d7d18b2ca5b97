"""A code location for the reliability tests that launch runs the way a deployment does
(`dagster job execute -m`, the GraphQL launcher): the test experiment's pipeline, named
`mnist` like the project's own, on `default_resources()` (so the environment configures
storage, Redis and Ray). Only `defs` is a Definitions at module scope: Dagster refuses two."""

import dagster as dg

from tests.reliability import support
from tinyexp_dagster import default_resources

defs = dg.Definitions.merge(support.PIPELINE, dg.Definitions(resources=default_resources()))
