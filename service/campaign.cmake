# Campaign engine and import parsers (issue 6): pure code with no service
# dependencies, shared by the service, the CLI and the tests.
esim_library(esim_campaign_core
  SOURCES ${PROJECT_SOURCE_DIR}/service/campaign_engine.c ${PROJECT_SOURCE_DIR}/service/campaign_import.c
  DEPS esim_restrictions esim_plist esim_core)
