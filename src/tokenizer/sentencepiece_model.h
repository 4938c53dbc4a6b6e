// Reader for SentencePiece's tokenizer.model (a serialized ModelProto, sentencepiece_model.proto). A small
// protobuf wire-format parser reads only the fields tokenization needs: the pieces (string, score, type), the
// trainer spec's model type, byte_fallback and special ids, and the normalizer spec's flags. Any truncation
// or malformed field throws ErrorKind::Format naming the file and the byte offset.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qtune {

enum class SpmPieceType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };
enum class SpmModelType { Unigram = 1, Bpe = 2, Word = 3, Char = 4 };

struct SpmPiece {
  std::string piece;
  float score = 0.0f;
  SpmPieceType type = SpmPieceType::Normal;
};

struct SpmModel {
  std::vector<SpmPiece> pieces;
  SpmModelType model_type = SpmModelType::Unigram;  // proto default
  bool byte_fallback = false;
  bool treat_whitespace_as_suffix = false;
  int unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  std::string normalizer_name;
  std::string precompiled_charsmap;  // raw bytes, empty for the identity normalizer
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
};

SpmModel parse_sentencepiece_model(const std::string& bytes, const std::string& source);

const char* spm_model_type_name(SpmModelType t);

}  // namespace qtune
