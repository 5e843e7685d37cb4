// Stream decoders reassemble replies whatever the chunk boundaries.
#define BOOST_TEST_MODULE codecs_test
#include <boost/test/unit_test.hpp>

#include "runtime/llm/codecs.hpp"
#include "runtime/llm/transcript.hpp"

#include <filesystem>
#include <fstream>
#include <random>

using namespace kowalski;
using namespace kowalski::llm;

namespace {

const std::string ollama_stream =
  "{\"model\":\"m\",\"created_at\":\"t\",\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},"
  "\"done\":false}\n"
  "{\"model\":\"m\",\"created_at\":\"t\",\"message\":{\"role\":\"assistant\",\"content\":"
  "\"lo \\u00fc\\n\"},\"done\":false}\n"
  "{\"model\":\"m\",\"created_at\":\"t\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},"
  "\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":26,\"eval_count\":3,"
  "\"eval_duration\":1000}\n";

const std::string openai_stream =
  ": keep-alive\n\n"
  "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":"
  "[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}],\"usage\":null}\n\n"
  "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},"
  "\"finish_reason\":null}],\"usage\":null}\r\n\r\n"
  "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\u00fc\\n\"},"
  "\"finish_reason\":null}],\"usage\":null}\n\n"
  "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],"
  "\"usage\":null}\n\n"
  "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":26,\"completion_tokens\":3,"
  "\"total_tokens\":29}}\n\n"
  "data: [DONE]\n\n";

struct decoded {
  std::string deltas;
  stream_result result;
};

decoded run(bool ollama, const std::vector<std::string_view>& pieces) {
  decoded out;
  auto on_delta = [&](std::string_view d) { out.deltas.append(d.data(), d.size()); };
  auto dec = ollama ? make_ollama_decoder(on_delta) : make_openai_decoder(on_delta);
  for (auto p : pieces) {
    dec->feed(p);
  }
  dec->finish();
  out.result = dec->result();
  return out;
}

void check_complete(const decoded& d) {
  BOOST_TEST(d.result.error == "");
  BOOST_TEST(d.result.done);
  BOOST_TEST(d.deltas == "Hello \xC3\xBC\n");
  BOOST_TEST(d.result.content == "Hello \xC3\xBC\n");
  BOOST_TEST(d.result.prompt_tokens == 26u);
  BOOST_TEST(d.result.completion_tokens == 3u);
  BOOST_TEST(d.result.finish_reason == "stop");
}

}  // namespace

BOOST_AUTO_TEST_CASE(ollama_stream_reassembles_at_every_split_point) {
  for (std::size_t cut = 0; cut <= ollama_stream.size(); ++cut) {
    std::string_view s{ollama_stream};
    check_complete(run(true, {s.substr(0, cut), s.substr(cut)}));
  }
}

BOOST_AUTO_TEST_CASE(openai_stream_reassembles_at_every_split_point) {
  for (std::size_t cut = 0; cut <= openai_stream.size(); ++cut) {
    std::string_view s{openai_stream};
    check_complete(run(false, {s.substr(0, cut), s.substr(cut)}));
  }
}

BOOST_AUTO_TEST_CASE(streams_reassemble_from_single_bytes_and_random_chunks) {
  for (bool ollama : {true, false}) {
    auto& text = ollama ? ollama_stream : openai_stream;
    std::vector<std::string_view> bytes;
    for (std::size_t i = 0; i < text.size(); ++i) {
      bytes.push_back(std::string_view{text}.substr(i, 1));
    }
    check_complete(run(ollama, bytes));

    std::mt19937 rng{42};
    for (int round = 0; round < 50; ++round) {
      std::vector<std::string_view> pieces;
      std::size_t at = 0;
      while (at < text.size()) {
        auto n = std::uniform_int_distribution<std::size_t>{1, 40}(rng);
        pieces.push_back(std::string_view{text}.substr(at, n));
        at += n;
      }
      check_complete(run(ollama, pieces));
    }
  }
}

BOOST_AUTO_TEST_CASE(a_cut_stream_is_an_error_not_a_short_reply) {
  auto half = std::string_view{ollama_stream}.substr(0, ollama_stream.size() / 2);
  auto d = run(true, {half});
  BOOST_TEST(!d.result.error.empty());
  BOOST_TEST(!d.result.done);

  auto cut = std::string_view{openai_stream}.substr(0, openai_stream.find("lo "));
  d = run(false, {cut});
  BOOST_TEST(!d.result.error.empty());
}

BOOST_AUTO_TEST_CASE(malformed_records_and_stream_errors_are_reported) {
  auto d = run(true, {"{\"message\":{\"content\":\"x\"\n"});
  BOOST_TEST(d.result.error.find("malformed") != std::string::npos);
  BOOST_TEST(!d.result.backend_reported);

  d = run(true, {"{\"error\":\"model crashed\"}\n"});
  BOOST_TEST(d.result.error == "model crashed");
  BOOST_TEST(d.result.backend_reported);

  d = run(false, {"data: {\"error\":{\"message\":\"boom\",\"type\":\"InternalServerError\","
                  "\"code\":500}}\n\ndata: [DONE]\n\n"});
  BOOST_TEST(d.result.error == "boom");
  BOOST_TEST(d.result.backend_reported);

  d = run(false, {"<html>gateway timeout</html>"});
  BOOST_TEST(!d.result.error.empty());
}

BOOST_AUTO_TEST_CASE(records_missing_optional_parts_do_not_throw) {
  decoded d;
  // The first choice has no "delta" at all.
  std::string openai = "data: {\"choices\":[{\"index\":0,\"finish_reason\":null}]}\n\n"
                       "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},"
                       "\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
  BOOST_CHECK_NO_THROW(d = run(false, {openai}));
  BOOST_TEST(d.result.error == "");
  BOOST_TEST(d.result.content == "x");
  BOOST_CHECK_NO_THROW(d = run(true, {"{\"model\":\"m\",\"done\":false}\n"
                                      "{\"model\":\"m\",\"done\":true,\"eval_count\":1}\n"}));
  BOOST_TEST(d.result.error == "");
  BOOST_TEST(d.result.done);
}

BOOST_AUTO_TEST_CASE(exo_style_usage_on_the_finish_chunk_is_read) {
  std::string exo =
    ": keep-alive\n\n"
    "data: {\"id\":\"x\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"delta\":"
    "{\"content\":\"hi\",\"reasoning_content\":null},\"finish_reason\":null}],\"usage\":null}\n\n"
    ": generation_stats {\"tps\":3}\n"
    "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}],"
    "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n"
    "data: [DONE]\n\n";
  auto d = run(false, {exo});
  BOOST_TEST(d.result.error == "");
  BOOST_TEST(d.result.content == "hi");
  BOOST_TEST(d.result.finish_reason == "length");
  BOOST_TEST(d.result.prompt_tokens == 5u);
  BOOST_TEST(d.result.completion_tokens == 1u);
}

BOOST_AUTO_TEST_CASE(request_bodies_put_sampling_where_each_backend_reads_it) {
  llm_request req;
  req.model = "m";
  req.messages = {{"user", "say \"hi\""}};
  req.options.temperature = 0.5;
  req.options.max_tokens = 64;
  auto ollama = ollama_chat_body(req, true);
  BOOST_TEST(ollama.find("\"options\":{\"temperature\":0.5,\"num_predict\":64}")
             != std::string::npos);
  BOOST_TEST(ollama.find("\"max_tokens\"") == std::string::npos);
  BOOST_TEST(ollama.find("say \\\"hi\\\"") != std::string::npos);
  auto openai = openai_chat_body(req, true);
  BOOST_TEST(openai.find("\"stream_options\":{\"include_usage\":true}") != std::string::npos);
  BOOST_TEST(openai.find("\"max_tokens\":64") != std::string::npos);
  BOOST_TEST(openai.find("\"temperature\":0.5") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(whole_replies_and_model_lists_parse) {
  auto r = decode_whole(provider::openai,
                        "{\"model\":\"m\",\"choices\":[{\"message\":{\"role\":\"assistant\","
                        "\"content\":\"ok\"},\"finish_reason\":\"stop\"}],\"usage\":"
                        "{\"prompt_tokens\":2,\"completion_tokens\":1}}");
  BOOST_TEST(r.error == "");
  BOOST_TEST(r.content == "ok");
  BOOST_TEST(r.completion_tokens == 1u);

  std::vector<model_info> models;
  std::string error;
  BOOST_TEST(parse_models(provider::ollama,
                          "{\"models\":[{\"name\":\"llama3.2:latest\",\"size\":7}]}", models,
                          error));
  BOOST_REQUIRE(models.size() == 1u);
  BOOST_TEST(models[0].name == "llama3.2:latest");
  BOOST_TEST(models[0].size_bytes == 7u);
  BOOST_TEST(!parse_models(provider::openai, "{\"models\":[]}", models, error));
  BOOST_TEST(error.find("data") != std::string::npos);
  BOOST_TEST(error_message("{\"error\":{\"message\":\"bad key\"}}") == "bad key");
  BOOST_TEST(error_message("{\"error\":\"no model\"}") == "no model");
}

BOOST_AUTO_TEST_CASE(transcripts_match_case_insensitively_and_fall_back_in_turn) {
  auto path = std::filesystem::temp_directory_path()
              / ("kowalski-transcript-" + std::to_string(::getpid()) + ".jsonl");
  std::ofstream{path} << "# demo\n"
                         "{\"match\":\"Hello\",\"reply\":\"Hi there.\",\"model\":\"demo\"}\n"
                         "\n"
                         "{\"reply\":\"First fallback.\",\"model\":\"demo\"}\n"
                         "{\"reply\":\"Second fallback.\",\"model\":\"demo\"}\n";
  std::string error;
  auto t = transcript::load(path.string(), error);
  BOOST_REQUIRE_MESSAGE(t, error);
  llm_request req;
  req.model = "demo";
  req.messages = {{"user", "well, HELLO you"}};
  BOOST_TEST(*t->answer(req) == "Hi there.");
  req.messages = {{"user", "what?"}};
  BOOST_TEST(*t->answer(req) == "First fallback.");
  req.messages = {{"user", "a"}, {"assistant", "b"}, {"user", "c"}};
  BOOST_TEST(*t->answer(req) == "Second fallback.");
  req.model = "other";
  BOOST_TEST(t->answer(req) == nullptr);
  BOOST_TEST(t->serves("demo"));

  std::ofstream{path} << "{\"match\":\"x\"}\n";
  BOOST_TEST(!transcript::load(path.string(), error));
  BOOST_TEST(error.find(":1") != std::string::npos);
  std::filesystem::remove(path);
}
