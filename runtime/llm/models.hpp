// Checking a model name against what the backend lists.
#pragma once

#include "messages/types.hpp"

#include <set>
#include <string>
#include <vector>

namespace kowalski {

/// The names a request may use for the models `served`: each as listed,
/// and Ollama's "name:latest" also as "name".
std::set<std::string> model_names(const std::vector<model_info>& served);

/// The names joined for an error message, cut after about 200 characters;
/// "nothing" when there are none.
std::string model_list(const std::set<std::string>& names);

}  // namespace kowalski
