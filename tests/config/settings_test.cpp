// Layered settings: defaults < file < environment < flags, and precise refusals.
#define BOOST_TEST_MODULE settings_test
#include <boost/test/unit_test.hpp>

#include "config/settings.hpp"

#include <filesystem>
#include <fstream>
#include <map>

using namespace kowalski;

namespace {

struct fixture {
  std::map<std::string, std::string> vars;
  std::filesystem::path dir;

  fixture() {
    dir = std::filesystem::temp_directory_path()
          / ("kowalski-settings-" + std::to_string(::getpid()) + "-"
             + std::to_string(counter()++));
    std::filesystem::create_directories(dir);
  }

  ~fixture() {
    std::filesystem::remove_all(dir);
  }

  static int& counter() {
    static int n = 0;
    return n;
  }

  env_lookup env() {
    return [this](const std::string& name) -> std::optional<std::string> {
      auto i = vars.find(name);
      if (i == vars.end()) {
        return std::nullopt;
      }
      return i->second;
    };
  }

  std::string write_file(const std::string& text) {
    auto path = (dir / "kowalski.conf").string();
    std::ofstream{path} << text;
    return path;
  }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(settings_loading, fixture)

BOOST_AUTO_TEST_CASE(defaults_apply_without_any_source) {
  vars["KOWALSKI_CONFIG_FILE"] = write_file("");
  auto r = load_settings({}, env());
  BOOST_REQUIRE(r.value);
  BOOST_TEST(r.value->http_address == "127.0.0.1");
  BOOST_TEST(r.value->http_port == 8080);
  BOOST_TEST(r.value->conversations_max_live == 100u);
  BOOST_TEST(r.value->conversations_history_window == 100u);
  BOOST_TEST(r.value->client_max_idle_per_host == 10u);
  BOOST_TEST(r.value->client_connect_timeout.count() == 10'000);
  BOOST_TEST(r.value->client_request_timeout.count() == 300'000);
}

BOOST_AUTO_TEST_CASE(each_layer_overrides_the_one_below) {
  auto path = write_file("[http]\nport = 9001\nthreads = 3\n[llm]\nmodel = \"from-file\"\n"
                         "workers = 4\n");
  vars["KOWALSKI_HTTP_PORT"] = "9002";
  vars["KOWALSKI_LLM_MODEL"] = "from-env";
  auto r = load_settings({"--config-file", path, "--http.port=9003"}, env());
  BOOST_REQUIRE_MESSAGE(r.value, (r.error ? r.error->message() : ""));
  BOOST_TEST(r.value->http_port == 9003);        // flag beats env and file
  BOOST_TEST(r.value->llm_model == "from-env");  // env beats file
  BOOST_TEST(r.value->http_threads == 3u);       // file beats default
  BOOST_TEST(r.value->llm_workers == 4u);
  BOOST_TEST(r.config_file == path);
}

BOOST_AUTO_TEST_CASE(ecosystem_variables_are_honoured) {
  vars["KOWALSKI_CONFIG_FILE"] = write_file("");
  vars["OLLAMA_HOST"] = "gpu-box:11500";
  vars["OPENAI_BASE_URL"] = "http://127.0.0.1:8000/v1/";
  vars["OPENAI_API_KEY"] = "sk-test";
  auto r = load_settings({}, env());
  BOOST_REQUIRE(r.value);
  BOOST_TEST(r.value->ollama_url == "http://gpu-box:11500");
  BOOST_TEST(r.value->openai_url == "http://127.0.0.1:8000/v1");
  BOOST_TEST(r.value->openai_api_key == "sk-test");

  vars["OLLAMA_HOST"] = "0.0.0.0";
  r = load_settings({}, env());
  BOOST_REQUIRE(r.value);
  BOOST_TEST(r.value->ollama_url == "http://0.0.0.0:11434");
}

BOOST_AUTO_TEST_CASE(ollama_host_beats_the_file_and_yields_to_our_variable_and_flags) {
  vars["KOWALSKI_CONFIG_FILE"] = write_file("[llm]\nollama_url = http://from-file:1\n");
  vars["OLLAMA_HOST"] = "from-ollama-host:2";
  auto r = load_settings({}, env());
  BOOST_REQUIRE_MESSAGE(r.value, (r.error ? r.error->message() : ""));
  BOOST_TEST(r.value->ollama_url == "http://from-ollama-host:2");

  vars["KOWALSKI_LLM_OLLAMA_URL"] = "http://from-kowalski:3";
  r = load_settings({}, env());
  BOOST_REQUIRE_MESSAGE(r.value, (r.error ? r.error->message() : ""));
  BOOST_TEST(r.value->ollama_url == "http://from-kowalski:3");

  r = load_settings({"--llm.ollama_url", "from-flag:4"}, env());
  BOOST_REQUIRE_MESSAGE(r.value, (r.error ? r.error->message() : ""));
  BOOST_TEST(r.value->ollama_url == "http://from-flag:4");
}

BOOST_AUTO_TEST_CASE(a_bad_ollama_host_names_the_variable_the_key_and_the_value) {
  vars["KOWALSKI_CONFIG_FILE"] = write_file("");
  vars["OLLAMA_HOST"] = "gopher://gpu-box";
  auto r = load_settings({}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->key == "llm.ollama_url");
  BOOST_TEST(r.error->value == "gopher://gpu-box");
  BOOST_TEST(r.error->source == "environment OLLAMA_HOST");
  auto text = r.error->message();
  BOOST_TEST(text.find("OLLAMA_HOST") != std::string::npos, text);
  BOOST_TEST(text.find("gopher://gpu-box") != std::string::npos, text);
  BOOST_TEST(text.find("a URL") != std::string::npos, text);

  // Overridden by our variable or a flag, it is not ours to judge.
  r = load_settings({"--llm.ollama_url", "http://127.0.0.1:5"}, env());
  BOOST_REQUIRE_MESSAGE(r.value, (r.error ? r.error->message() : ""));
  BOOST_TEST(r.value->ollama_url == "http://127.0.0.1:5");
  vars["KOWALSKI_LLM_OLLAMA_URL"] = "http://127.0.0.1:6";
  r = load_settings({}, env());
  BOOST_REQUIRE_MESSAGE(r.value, (r.error ? r.error->message() : ""));
  BOOST_TEST(r.value->ollama_url == "http://127.0.0.1:6");
}

BOOST_AUTO_TEST_CASE(per_model_limits_parse_and_bad_ones_are_refused) {
  vars["KOWALSKI_CONFIG_FILE"] = write_file("");
  auto r = load_settings({"--llm.model_limits", "llama3.2=4, qwen:7b=8"}, env());
  BOOST_REQUIRE_MESSAGE(r.value, (r.error ? r.error->message() : ""));
  BOOST_TEST(r.value->llm_model_limits.size() == 2u);
  BOOST_TEST(r.value->llm_model_limits.at("llama3.2") == 4u);
  BOOST_TEST(r.value->llm_model_limits.at("qwen:7b") == 8u);
  for (auto bad : {"llama3.2", "=3", "m=0", "m=x"}) {
    r = load_settings({"--llm.model_limits", bad}, env());
    BOOST_REQUIRE(r.error);
    BOOST_TEST(r.error->key == "llm.model_limits");
    BOOST_TEST(r.error->expected.find("model=count") != std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(bad_values_name_key_value_source_and_expectation) {
  vars["KOWALSKI_CONFIG_FILE"] = write_file("");
  vars["KOWALSKI_HTTP_PORT"] = "eighty";
  auto r = load_settings({}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->key == "http.port");
  BOOST_TEST(r.error->value == "eighty");
  BOOST_TEST(r.error->source == "environment KOWALSKI_HTTP_PORT");
  BOOST_TEST(r.error->message().find("0 to 65535") != std::string::npos);

  vars.erase("KOWALSKI_HTTP_PORT");
  r = load_settings({"--client.connect_timeout", "10"}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->key == "client.connect_timeout");
  BOOST_TEST(r.error->expected.find("unit") != std::string::npos);

  r = load_settings({"--llm.provider=claude"}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->expected.find("ollama") != std::string::npos);

  r = load_settings({"--no.such_key=1"}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->key == "no.such_key");

  r = load_settings({"serve-me"}, env());
  BOOST_REQUIRE(r.error);
}

BOOST_AUTO_TEST_CASE(file_errors_name_the_line) {
  auto path = write_file("[http]\n# comment\nbody_limit = 12 parsecs\n");
  auto r = load_settings({"--config-file=" + path}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->key == "http.body_limit");
  BOOST_TEST(r.error->source == "file " + path + ":3");
}

BOOST_AUTO_TEST_CASE(durations_and_sizes_take_units) {
  vars["KOWALSKI_CONFIG_FILE"] = write_file("");
  auto r = load_settings({"--http.request_timeout=2m", "--http.body_limit=2MiB",
                          "--client.request_timeout=1500ms", "--provider", "REPLAY"},
                         env());
  BOOST_REQUIRE_MESSAGE(r.value, (r.error ? r.error->message() : ""));
  BOOST_TEST(r.value->http_request_timeout.count() == 120'000);
  BOOST_TEST(r.value->http_body_limit == 2u << 20);
  BOOST_TEST(r.value->client_request_timeout.count() == 1500);
  BOOST_TEST(r.value->llm_provider == "replay");
}

BOOST_AUTO_TEST_CASE(binding_beyond_loopback_requires_a_token) {
  vars["KOWALSKI_CONFIG_FILE"] = write_file("");
  auto r = load_settings({"--http.address=0.0.0.0"}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->key == "http.token");

  vars["KOWALSKI_HTTP_TOKEN"] = "s3cret";
  r = load_settings({"--http.address=0.0.0.0"}, env());
  BOOST_REQUIRE(r.value);
  BOOST_TEST(r.value->http_token == "s3cret");
}

BOOST_AUTO_TEST_CASE(oversized_sizes_and_open_remoting_are_refused) {
  vars["KOWALSKI_CONFIG_FILE"] = write_file("");
  auto r = load_settings({"--store.map_size=20000000GiB"}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->key == "store.map_size");

  r = load_settings({"--remote.port=4242", "--remote.address=0.0.0.0"}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->key == "remote.address");
  r = load_settings({"--remote.port=4242", "--remote.address=0.0.0.0",
                     "--remote.allow_unauthenticated=true"},
                    env());
  BOOST_TEST(r.value.has_value());
  r = load_settings({"--remote.allow_unauthenticated=maybe"}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->expected == "true or false");
}

BOOST_AUTO_TEST_CASE(openai_provider_needs_a_key_for_the_public_endpoint) {
  auto path = write_file("[llm]\nopenai_api_key = \n");
  vars["KOWALSKI_CONFIG_FILE"] = path;
  vars["KOWALSKI_LLM_PROVIDER"] = "openai";
  auto r = load_settings({}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->key == "llm.openai_api_key");
}

BOOST_AUTO_TEST_CASE(remote_embedders_and_qdrant_are_checked_at_load) {
  auto r = load_settings({"--memory.embedder=ollama"}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->key == "memory.embed_model");
  r = load_settings({"--memory.embedder=cohere"}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->key == "memory.embedder");
  BOOST_TEST(r.error->expected.find("openai") != std::string::npos);
  r = load_settings({"--memory.embedder=openai", "--memory.embed_model=text-embedding-3-small",
                     "--memory.dims=1536", "--memory.embed_url=localhost:8000/v1",
                     "--memory.embed_api_key=sk-1"},
                    env());
  BOOST_REQUIRE(r.value);
  BOOST_TEST(r.value->memory_embed_url == "https://localhost:8000/v1");
  BOOST_TEST(r.value->memory_dims == 1536u);
  // A bare host gets the embedder's usual port.
  r = load_settings({"--memory.embedder=openai", "--memory.embed_model=m",
                     "--memory.embed_url=embed.local"},
                    env());
  BOOST_REQUIRE(r.value);
  BOOST_TEST(r.value->memory_embed_url == "https://embed.local:443");
  r = load_settings({"--memory.embedder=ollama", "--memory.embed_model=m",
                     "--memory.embed_url=embed.local"},
                    env());
  BOOST_REQUIRE(r.value);
  BOOST_TEST(r.value->memory_embed_url == "http://embed.local:11434");
  r = load_settings({"--memory.embed_url=  "}, env());
  BOOST_REQUIRE(r.value);
  BOOST_TEST(r.value->memory_embed_url.empty());
  r = load_settings({"--memory.embed_url=ftp://x"}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->key == "memory.embed_url");
  // The default URL is the LLM backend's: left empty here.
  r = load_settings({"--memory.embedder=ollama", "--memory.embed_model=nomic-embed-text"},
                    env());
  BOOST_REQUIRE(r.value);
  BOOST_TEST(r.value->memory_embed_url.empty());
  BOOST_TEST(r.value->memory_embed_batch == 64u);

  r = load_settings({"--memory.vector_backend=qdrant", "--memory.qdrant_url=qdrant.local"},
                    env());
  BOOST_REQUIRE(r.value);
  BOOST_TEST(r.value->memory_qdrant_url == "http://qdrant.local:6333");
  r = load_settings({"--memory.qdrant_collection=a/b"}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->key == "memory.qdrant_collection");
  r = load_settings({"--memory.vector_backend=faiss"}, env());
  BOOST_REQUIRE(r.error);
  BOOST_TEST(r.error->key == "memory.vector_backend");
}

BOOST_AUTO_TEST_SUITE_END()
