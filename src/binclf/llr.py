"""Where a log-likelihood ratio can be learnt from data: the range of the llr that ``test/llr_rmse`` measures.
Shared by the metric, the data module's floor, the test summary, the figures and a sweep's report; plain
Python, so that a sweep's own process, drawing its report, loads no torch."""

# llr_rmse compares the logit with the true log-likelihood ratio only where |llr| <= this (posterior between
# 0.018 and 0.982). Far out in the tails nearly every sample has one label, so the data cannot pin the llr
# down and no classifier trained on it is expected to follow it.
INFORMATIVE_LLR = 4.0
