// SFT data (train/dataset.h, train/collate.h): the row formats, Alpaca prompts, EOS, completion-only
// masks, truncation, errors naming file and line, packing with per-example positions / sequence ids.
#include "train/dataset.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "train/collate.h"

using namespace qtune;

namespace {

const std::string kModel = std::string(QTUNE_SOURCE_DIR) + "/models/qtune-tiny-8m";

std::string write_tmp(const std::string& name, const std::string& text) {
  const std::string dir = testing::TempDir() + "qtune_dataset_test";
  std::filesystem::create_directories(dir);
  const std::string p = dir + "/" + name;
  std::ofstream(p) << text;
  return p;
}

std::string error_of(const std::string& path, const std::string& tmpl = "") {
  try {
    read_sft_rows(path, tmpl, "<s>", "</s>");
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST(SftData, RowFormats) {
  const std::string p = write_tmp("rows.jsonl",
                                  "{\"text\": \"hello world\"}\n\n"
                                  "{\"prompt\": \"Q: \", \"completion\": \"A\"}\n"
                                  "{\"instruction\": \"Add.\", \"input\": \"1 2\", \"output\": \"3\"}\n"
                                  "{\"instruction\": \"Say hi.\", \"output\": \"hi\"}\n");
  std::vector<SftRow> rows = read_sft_rows(p, "", "<s>", "</s>");
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[0].segments.size(), 1u);
  EXPECT_EQ(rows[1].segments[0].text, "Q: ");
  EXPECT_FALSE(rows[1].segments[0].trained);
  EXPECT_EQ(rows[2].segments[0].text, "### Instruction:\nAdd.\n\n### Input:\n1 2\n\n### Response:\n");
  EXPECT_EQ(rows[3].segments[0].text, alpaca_prompt("Say hi.", ""));
  EXPECT_EQ(rows[3].segments[0].text, "### Instruction:\nSay hi.\n\n### Response:\n");
  EXPECT_EQ(rows[3].where, p + ":5");
}

TEST(SftData, ChatRowsUseTemplate) {
  const std::string tmpl =
      "{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
      "'<|im_end|>\\n' }}"
      "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  const std::string p = write_tmp("chat.jsonl",
                                  "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": "
                                  "\"assistant\", \"content\": \"yo\"}]}\n");
  std::vector<SftRow> rows = read_sft_rows(p, tmpl, "<s>", "</s>");
  ASSERT_EQ(rows[0].segments.size(), 2u);
  EXPECT_EQ(rows[0].segments[0].text, "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_FALSE(rows[0].segments[0].trained);
  EXPECT_EQ(rows[0].segments[1].text, "yo<|im_end|>\n");
  EXPECT_FALSE(rows[0].add_special_tokens);
  EXPECT_NE(error_of(p).find("chat_template"), std::string::npos);
}

TEST(SftData, ErrorsNameFileAndLine) {
  const std::string bad = write_tmp("bad.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\"\n");
  EXPECT_NE(error_of(bad).find(bad + ":2: invalid JSON"), std::string::npos) << error_of(bad);
  const std::string missing = write_tmp("missing.jsonl", "{\"prompt\": \"a\"}\n");
  EXPECT_NE(error_of(missing).find(missing + ":1: missing field \"completion\""), std::string::npos);
  const std::string type = write_tmp("type.jsonl", "{\"text\": 5}\n");
  EXPECT_NE(error_of(type).find("field \"text\" must be a string, got integer (5)"), std::string::npos);
  const std::string none = write_tmp("none.jsonl", "{\"foo\": \"a\"}\n");
  EXPECT_NE(error_of(none).find(":1: a row needs"), std::string::npos);
  const std::string empty = write_tmp("empty.jsonl", "\n\n");
  EXPECT_NE(error_of(empty).find("the dataset is empty"), std::string::npos);
  const std::string arr =
      write_tmp("arr.json", "[{\"instruction\": \"x\", \"output\": \"y\"}, {\"instruction\": \"x\"}]");
  EXPECT_NE(error_of(arr).find(arr + " [1]: missing field \"output\""), std::string::npos) << error_of(arr);
  const std::string msgs = write_tmp("msgs.jsonl", "{\"messages\": [{\"role\": \"user\"}]}\n");
  EXPECT_NE(error_of(msgs, "x").find(":1 messages[0]: missing field \"content\""), std::string::npos)
      << error_of(msgs, "x");
}

TEST(SftData, TokenizeEosMasksTruncation) {
  auto tok = Tokenizer::load(kModel);
  std::vector<SftRow> rows = {{"r0", {{"Hello there", true}}, true},
                              {"r1", {{"Question: why?", false}, {" Because.", true}}, true}};
  int64_t tr = -1, dr = -1;
  auto ex = tokenize_rows(rows, *tok, {false, 1024}, &tr, &dr);
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(tr, 0);
  for (const SftExample& e : ex) {
    EXPECT_EQ(e.ids.back(), tok->eos_id());
    EXPECT_EQ(e.labels.back(), tok->eos_id());  // EOS is trained
    EXPECT_EQ(e.ids.front(), tok->bos_id());
    EXPECT_EQ(e.ids, e.labels);
  }
  auto masked = tokenize_rows(rows, *tok, {true, 1024}, &tr, &dr);
  const std::vector<int32_t> q = tok->encode("Question: why?", true);
  for (size_t i = 0; i < q.size(); ++i) EXPECT_EQ(masked[1].labels[i], -100);
  EXPECT_EQ(masked[1].labels[q.size()], masked[1].ids[q.size()]);
  auto cut = tokenize_rows(rows, *tok, {false, 3}, &tr, &dr);
  EXPECT_EQ(tr, 2);
  EXPECT_EQ(cut[0].ids.size(), 3u);
  // A row whose trained part is truncated away is dropped.
  auto gone = tokenize_rows({rows[1]}, *tok, {true, 3}, &tr, &dr);
  EXPECT_TRUE(gone.empty());
  EXPECT_EQ(dr, 1);
}

TEST(SftData, PackingKeepsExamplesApart) {
  std::vector<SftExample> ex = {
      {{5, 6, 7}, {-100, 6, 7}}, {{8, 9}, {8, 9}}, {{10, 11, 12, 13}, {10, 11, 12, 13}}};
  auto rows = make_rows(ex, {0, 1, 2}, true, 6);
  ASSERT_EQ(rows.size(), 2u);  // [0, 1] (5 tokens), [2]
  MicroBatch mb = collate(ex, rows, 0, 2, 0);
  ASSERT_EQ(mb.ids.size(1), 5);
  const int32_t* ids = mb.ids.data<int32_t>();
  const int32_t* lab = mb.labels.data<int32_t>();
  const int32_t* pos = mb.positions.data<int32_t>();
  const int32_t* seq = mb.seq_ids.data<int32_t>();
  EXPECT_EQ(std::vector<int32_t>(ids, ids + 5), (std::vector<int32_t>{5, 6, 7, 8, 9}));
  EXPECT_EQ(std::vector<int32_t>(lab, lab + 5),
            (std::vector<int32_t>{6, 7, -100, 9, -100}));  // shifted, cut at boundaries
  EXPECT_EQ(std::vector<int32_t>(pos, pos + 5), (std::vector<int32_t>{0, 1, 2, 0, 1}));
  EXPECT_EQ(std::vector<int32_t>(seq, seq + 5), (std::vector<int32_t>{0, 0, 0, 1, 1}));
  EXPECT_EQ(std::vector<int32_t>(ids + 5, ids + 10), (std::vector<int32_t>{10, 11, 12, 13, 0}));  // padded
  EXPECT_EQ(std::vector<int32_t>(lab + 5, lab + 10), (std::vector<int32_t>{11, 12, 13, -100, -100}));
  EXPECT_EQ(seq[9], 1);  // padding is its own sequence
  EXPECT_EQ(mb.tokens, 9);
  EXPECT_EQ(mb.targets, 6);
  auto unpacked = make_rows(ex, {2, 0, 1}, false, 6);
  EXPECT_EQ(unpacked.size(), 3u);
  EXPECT_EQ(unpacked[0], std::vector<int64_t>{2});
}
